"""The verification cascade, the MILP and alpha methods of certify, and the max-radius bisection."""

import copy
import math

import pytest
import torch
from torch import nn

from certkit import LinfBall, margin_spec
from certkit.attacks import pgd
from certkit.specs import L2Ball, LinearSpec
from certkit.verify import certify, max_radius, verify_property


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                          nn.Linear(24, 4)).eval()
    with torch.no_grad():  # larger weights: several classes are predicted and the relaxations differ
        for m in model[1::2]:
            m.weight.mul_(2.0)
    return model


@pytest.fixture(scope="module")
def batch():
    model = small_net()
    torch.manual_seed(1)
    x = torch.rand(24, 1, 4, 4)
    y = model(x).argmax(1)
    return model, x, y


def test_methods_are_ordered_by_strength_and_sound(batch):
    model, x, y = batch
    eps = 0.04
    names = ("ibp", "crown", "alpha", "bab", "milp", "cascade")
    got = {m: certify(model, x, y, eps, m, timeout=30) for m in names}
    ibp, crown, alpha, bab, milp, cascade = (got[m].certified for m in names)
    assert (crown | ibp).sum() <= alpha.sum() + ibp.sum()
    assert not (crown & ~alpha).any() and not (alpha & ~milp).any()
    assert (milp == cascade).all() and (bab == milp).all()  # all exact here: nothing times out
    assert 0 < milp.sum() < len(y) and crown.sum() < milp.sum()  # the case is not trivial
    strong = pgd(model, x, y, eps, steps=100, restarts=5, loss="margin")
    assert not (milp & strong.success).any()
    # every input the exact methods leave uncertified is falsified by the cascade, with a checked counterexample
    for i, v in enumerate(got["cascade"].verdicts):
        if v.verdict == "falsified":
            s = LinfBall(x[i:i + 1], eps)
            assert s.contains(v.counterexample).all()
            # checked in float64; returned in float64 when rounding to float32 would lose a margin this small
            out = copy.deepcopy(model).double()(v.counterexample.double())
            assert out.argmax(1).item() != y[i].item() or (out[0, y[i]] - out[0]).sort().values[1] <= 1e-6
        else:
            assert v.verdict == "verified" and set(v.seconds) <= {"attack", "ibp", "crown", "alpha", "bab", "milp"}
    assert {v.verdict for v in got["cascade"].verdicts} == {"verified", "falsified"}
    # branch and bound decides what the bounds leave open; the MILP is not needed after it
    assert "bab" in {v.stage for v in got["cascade"].verdicts}
    assert all("milp" not in v.seconds for v in got["cascade"].verdicts)
    # without branch and bound the MILP decides the same inputs
    alone = certify(model, x, y, eps, "cascade", timeout=30, stages=("attack", "ibp", "crown", "alpha", "milp"))
    assert (alone.certified == cascade).all()


def test_clauses_need_one_positive_row_each():
    model = small_net(2)
    x = torch.rand(3, 1, 4, 4)
    out = model(x)
    s = LinfBall(x, 1e-4)
    # clause 0: row "f0 − f0_centre + 1 > 0" (true) OR row "−1 > 0" (false): refuted by its first row
    C = torch.zeros(3, 2, 4)
    C[:, 0, 0] = 1
    d = torch.stack([1 - out[:, 0].detach(), -torch.ones(3)], 1)
    v = verify_property(model, s, LinearSpec(C, d), clauses=torch.tensor([0, 0]))
    assert all(r.verdict == "verified" for r in v)
    # as two separate clauses, the constant row −1 > 0 is violated everywhere: falsified by the attack
    v = verify_property(model, s, LinearSpec(C, d))
    assert all(r.verdict == "falsified" and r.stage == "attack" for r in v)


def test_cascade_on_l2_balls_skips_branch_and_bound_and_the_milp():
    model, x, y = small_net(), torch.rand(4, 1, 4, 4), None
    y = model(x).argmax(1)
    c = certify(model, x, y, 0.05, "cascade", norm="2")
    assert all("milp" not in v.seconds and "bab" not in v.seconds for v in c.verdicts)
    v = verify_property(model, L2Ball(x, 0.05), margin_spec(y, 4), stages=("ibp",))
    assert all(r.verdict in ("verified", "unknown") for r in v)
    with pytest.raises(ValueError, match="unknown stages"):
        verify_property(model, L2Ball(x, 0.05), margin_spec(y, 4), stages=("zonotope",))


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_max_radius_is_certified_and_tight_to_tol(batch, method):
    model, x, y = batch
    r = max_radius(model, x, y, method, hi=0.3, tol=1e-3)
    ok = r > 0
    assert ok.any()
    at = certify(model, x[ok], y[ok], r[ok].float(), method)
    assert at.certified.all()
    above = certify(model, x[ok], y[ok], (r[ok] + 2e-3).float(), method)
    assert not above.certified[r[ok] < 0.3 - 1e-9].any()
    assert math.isclose(float(r.max()), float(r.max()))


def test_cascade_skips_the_complete_stages_for_ops_they_cannot_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 4)).eval()
    x = torch.rand(3, 1, 4, 4)
    c = certify(model, x, model(x).argmax(1), 0.2, "cascade")
    assert all("milp" not in v.seconds and "bab" not in v.seconds for v in c.verdicts)
    assert all(v.verdict in ("verified", "falsified", "unknown") for v in c.verdicts)


def test_summaries_count_verdicts_and_stages():
    from certkit.verify import stage_summary, summarize

    rows = [{"eps": 0.1, "correct": True, "certified": True, "verdict": "verified", "stage": "crown",
             "seconds": {"attack": 0.1, "ibp": 0.0, "crown": 0.2}},
            {"eps": 0.1, "correct": True, "certified": False, "verdict": "falsified", "stage": "attack",
             "seconds": {"attack": 0.3}},
            {"eps": 0.1, "correct": True, "certified": False, "verdict": "unknown", "stage": "",
             "seconds": {"attack": 0.1, "ibp": 0.0, "crown": 0.2, "bab": 5.0}}]
    s = summarize(rows)[0]
    assert (s["verified"], s["falsified"], s["unknown"], s["certified"]) == (1, 1, 1, 1 / 3)
    st = {r["stage"]: r for r in stage_summary(rows)}
    assert list(st) == ["attack", "ibp", "crown", "bab"]
    assert (st["attack"]["ran"], st["attack"]["falsified"], st["crown"]["verified"], st["bab"]["ran"]) == (3, 1, 1, 1)
    assert st["bab"]["seconds"] == 5.0 and st["attack"]["s/input"] == round(0.5 / 3, 3)
    assert "verified" not in summarize([{"eps": 0.1, "correct": True, "certified": True}])[0]


def test_the_one_radius_bisection_finds_each_threshold_to_tol():
    from certkit.verify.certify import bisect_radius

    true = torch.tensor([0.0, 0.013, 0.2, 0.5, 0.31], dtype=torch.float64)  # certified exactly below these radii
    correct = torch.tensor([True, True, True, True, False])
    calls = []

    def certified(idx, eps):
        calls.append(len(idx))
        return eps.double() < true[idx]

    r = bisect_radius(certified, correct, 0.4, 1e-3)
    assert r[3] == 0.4 and r[4] == 0 and r[0] == 0  # certified at hi; misclassified
    assert ((true[:3] - 1e-3 <= r[:3]) & (r[:3] <= true[:3])).all()
    assert calls[0] == 4 and max(calls[1:]) == 3  # misclassified inputs are never bounded


def test_a_property_groups_rows_into_clauses_and_the_cascade_takes_it():
    from certkit.specs import Property, SpecError

    C = torch.eye(3).unsqueeze(0).repeat(2, 1, 1)
    prop = Property(LinearSpec(C, None), torch.tensor([5, 5, 9]))  # any labels: two clauses, {0, 1} and {2}
    rows = torch.tensor([[-1.0, 2.0, 0.5], [-1.0, -2.0, 3.0]])
    assert prop.value(rows).tolist() == [0.5, -1.0] and prop.proved(rows).tolist() == [True, False]
    assert prop.rows_of(0).tolist() == [0, 1] and prop.clause(1).C.shape == (2, 1, 3)
    assert prop.subset(1).C.shape == (1, 3, 3) and torch.equal(prop.d, torch.zeros(2, 3))
    with pytest.raises(SpecError, match="one integer clause index per spec row"):
        Property(LinearSpec(C, None), torch.tensor([0.0, 1.0, 1.0]))
    model = small_net()
    x = torch.rand(2, 1, 4, 4)
    s = LinfBall(x, 0.02)
    spec = LinearSpec(torch.randn(2, 4, 4), torch.randn(2, 4))
    clauses = torch.tensor([0, 0, 1, 1])
    a = verify_property(model, s, Property(spec, clauses), stages=("attack", "crown"))
    b = verify_property(model, s, spec, clauses, stages=("attack", "crown"))
    assert [v.verdict for v in a] == [v.verdict for v in b]
    assert all(torch.equal(u.lower, v.lower) for u, v in zip(a, b))
