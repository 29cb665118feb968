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
