"""Branch and bound over Sigmoid/Tanh intervals: sound against strong attacks, tighter than CROWN, in the cascade."""

import pytest
import torch
from torch import nn

from certkit import graph as g
from certkit.attacks.pgd import pgd_minimize
from certkit.bounds.linear import crown_bounds
from certkit.specs import Box, LinearSpec, LinfBall
from certkit.verify import verify_property
from certkit.verify.act_bab import activation_bab
from certkit.verify.certify import certify


def s_net(act, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, 32), act(),
                         nn.Linear(32, 3)).eval()


def clause_of(model, x, k):
    y = int(model(x).argmax(1))
    C = torch.zeros(1, 3)
    C[0, y], C[0, k] = 1, -1
    return C, y


def pgd_min(model, box, C):
    f = lambda z: (model(z) @ C.T)[:, 0]  # noqa: E731
    many = Box(box.lower.expand(64, -1), box.upper.expand(64, -1))
    return float(pgd_minimize(f, many, 100, 1, generator=torch.Generator().manual_seed(0))[1].min())


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
@pytest.mark.parametrize("seed", range(3))
def test_bound_is_sound_and_verdicts_agree_with_attacks(act, seed):
    model = s_net(act, seed)
    x = torch.rand(1, 20)
    for eps in (0.1, 0.4):
        s = LinfBall(x, eps)
        box = Box(s.lower, s.upper)
        for k in range(3):
            C, y = clause_of(model, x, k)
            if k == y:
                continue
            r = activation_bab(model, box, C, time_limit=2)
            attacked = pgd_min(model, box, C)
            assert r.bound <= attacked + 1e-6  # a lower bound of the minimum
            if r.verdict == "verified":
                assert attacked > 0
            if r.verdict == "falsified":
                assert bool(box.contains(r.x)[0]) and float((model(r.x.double().float()) @ C.T)[0, 0]) <= 0
            root = float(crown_bounds(model, box, LinearSpec(C[None], None)).lower.detach())
            assert r.bound >= root - 1e-6 or r.verdict == "falsified"


def test_splitting_proves_what_crown_cannot_and_the_cascade_uses_it():
    model = s_net(nn.Tanh, 0)
    x = torch.rand(1, 20)
    box = LinfBall(x, 0.2)
    C, y = clause_of(model, x, 2)
    assert float(crown_bounds(model, Box(box.lower, box.upper), LinearSpec(C[None], None)).lower.detach()) < 0
    r = activation_bab(model, Box(box.lower, box.upper), C, time_limit=20)
    assert r.verdict == "verified" and r.domains > 1
    v = verify_property(model, box, LinearSpec(C[None], None), timeout=20)[0]
    assert v.verdict == "verified" and v.stage == "bab"


def test_certify_with_bab_splits_activations_of_a_tanh_net():
    """``certify(..., method="bab")`` (the CLI's ``--method bab``) takes Sigmoid/Tanh networks to activation
    splitting: it proves a small ball and finds a checked counterexample in a large one."""
    model = s_net(nn.Tanh, 0)
    torch.manual_seed(0)
    x = torch.rand(1, 20)
    y = model(x).argmax(1)
    proved = certify(model, x, y, 0.1, "bab", timeout=10)
    assert bool(proved.certified[0]) and proved.verdicts[0].stage == "bab" and float(proved.margin_lower[0]) > 0
    broken = certify(model, x, y, 0.3, "bab", timeout=10)
    v = broken.verdicts[0]
    assert v.verdict == "falsified" and not bool(broken.certified[0])
    cex = v.counterexample.to(x.dtype)
    assert float((cex - x).abs().max()) <= 0.3 + 1e-6 and int(model(cex).argmax(1)) != int(y)
    pooled = nn.Sequential(nn.Unflatten(1, (1, 4, 5)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 3), nn.ReLU(),
                           nn.Linear(3, 3)).eval()  # MaxPool in a ReLU net: neither splitting applies
    with pytest.raises(g.UnsupportedOpError, match="piecewise-linear"):
        certify(pooled, x, pooled(x).argmax(1), 0.1, "bab")
