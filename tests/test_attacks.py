import pytest
import torch
from torch import nn

from certkit.attacks import pgd
from certkit.specs import L2Ball, LinfBall
from certkit.verify import certify


def linear_model():
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        m[1].bias.zero_()
    return m


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_finds_the_known_adversarial_and_stays_in_the_ball(norm):
    m = linear_model()
    x = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.9, 0.1, 0.2, 0.2]])
    y = torch.tensor([0, 0])
    res = pgd(m, x, y, 0.1, norm, steps=20)
    assert res.success.tolist() == [True, False]  # margin 0.1 breakable, margin 0.8 not
    s = (LinfBall if norm == "inf" else L2Ball)(x, 0.1)
    assert s.contains(res.x_adv, tol=1e-5).all()
    assert (m(res.x_adv).argmax(1) != y)[res.success].all()


def test_pgd_rejects_bad_input():
    m = linear_model()
    with pytest.raises(ValueError):
        pgd(m, torch.rand(2, 4), torch.tensor([0]), 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        pgd(m, torch.rand(2, 4), torch.tensor([0, 1]), -0.1)


@pytest.mark.parametrize("seed", range(4))
def test_ibp_certified_points_are_never_broken(seed):
    """Property test: strong PGD (margin loss, restarts) never breaks an input that IBP certifies."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(200, 10)
    y = m(x).argmax(1)  # correct by construction, so certification is about robustness alone
    for eps in (0.005, 0.02, 0.05):
        cert = certify(m, x, y, eps)
        res = pgd(m, x, y, eps, steps=50, restarts=3, loss="margin")
        assert not (cert.certified & res.success).any()
        if eps == 0.005:
            assert cert.certified.sum() > 20  # the test is not vacuous


def test_certify_rejects_bad_input():
    from certkit.specs import SpecError

    m = linear_model()
    with pytest.raises(SpecError, match="labels must have shape"):
        certify(m, torch.rand(2, 4), torch.tensor([0]), 0.1)
    with pytest.raises(SpecError, match="do not fit the model"):
        certify(m, torch.rand(2, 5), torch.tensor([0, 1]), 0.1)
    with pytest.raises(SpecError, match="NaN"):
        certify(m, torch.tensor([[0.1, float("nan"), 0.2, 0.3]]), torch.tensor([0]), 0.1)
    with pytest.raises(SpecError, match="non-negative"):
        certify(m, torch.rand(1, 4), torch.tensor([0]), -1.0)
    with pytest.raises(ValueError, match="unknown certification method"):
        certify(m, torch.rand(1, 4), torch.tensor([0]), 0.1, method="magic")


def needle(x: torch.Tensor) -> torch.Tensor:
    """Below 0 only near the corner a = (0.95, 0.95) (a basin of ~4 % of the unit square); everywhere else the
    steepest descent leads to b = (0.05, 0.05), where the value is 0.5."""
    a, b = torch.tensor([0.95, 0.95]), torch.tensor([0.05, 0.05])
    near_a = 10 * ((x - a).abs().amax(1) - 0.02)
    return torch.minimum(near_a, 0.5 + (x - b).abs().amax(1))


def test_pgd_search_restarts_until_it_finds_a_narrow_basin_and_keeps_its_time():
    import time

    from certkit.attacks.pgd import pgd_minimize, pgd_search
    from certkit.specs import Box

    lo, hi = torch.zeros(1, 2), torch.ones(1, 2)
    _, v = pgd_minimize(needle, Box(lo, hi), 50, 1)  # one run from the centre ends at b
    assert float(v[0]) > 0.4
    x, v = pgd_search(needle, lo, hi, 10.0, generator=torch.Generator().manual_seed(0))
    assert v <= 0 and float(needle(x)[0]) == v and bool(((x >= lo) & (x <= hi)).all())
    t = time.perf_counter()
    x, v = pgd_search(lambda z: needle(z) + 1, lo, hi, 0.5)  # nothing to find: the time is kept
    assert v > 0 and time.perf_counter() - t < 1.5
