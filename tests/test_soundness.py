"""Regression tests for the unsound paths an independent audit found (issue 22); each failed before its fix."""

import math

import pytest
import torch
from torch import nn

from certkit.bounds.interval import Bounds
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.bounds.relax import sshape_relaxation
from certkit.specs import Box, LinearSpec, ball
from certkit.verify import certify, verify_property
from certkit.verify.milp import MilpEncoding, MilpResult


def small_relu_net(seed: int, n_in: int = 4, width: int = 8, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, n_out))


def test_milp_stage_never_verifies_a_violated_centre():
    """ε = 0 and a row equal to −1e-4 at x: float32 row bounds handed to the float64 MILP used to contradict it
    (an empty column, 'infeasible', read as verified; 20 of 60 such nets)."""
    for seed in range(15):
        net = small_relu_net(seed)
        x = torch.rand(1, 4)
        c = torch.randn(1, 1, 3)
        with torch.no_grad():
            d = -(c[0, 0] @ net(x)[0]).reshape(1, 1) - 1e-4
        for eps in (0.0, 1e-9):
            v = verify_property(net, ball("inf", x, eps, (0.0, 1.0)), LinearSpec(c, d),
                                stages=("ibp", "crown", "alpha", "milp"))[0]
            assert v.verdict == "falsified", (seed, eps, v.verdict)
            with torch.no_grad():
                assert float(c[0, 0].double() @ net.double()(v.counterexample.double())[0] + d.double()) <= 0
            net.float()


def test_milp_row_lower_above_the_true_minimum_is_not_trusted():
    """A (wrong) row_lower above the value at the centre must not make the MILP answer 'verified'."""
    net = small_relu_net(0)
    x = torch.rand(1, 4)
    enc = MilpEncoding(net, Box(x, x))
    c = torch.randn(3)
    with torch.no_grad():
        d = -float(c @ net(x)[0]) - 1e-4
    r = enc.minimize_property(c.reshape(1, -1), torch.tensor([d]), row_lower=torch.tensor([0.5]))
    assert r.verdict == "falsified"


def test_milp_reported_bound_is_a_lower_bound():
    """With the sign cut-off HiGHS can stop with a dual bound above the true minimum (18 of 120 before)."""
    for seed in range(12):
        net = small_relu_net(seed, n_in=6, width=16)
        x = torch.rand(1, 6)
        enc = MilpEncoding(net, ball("inf", x, 0.05, (0.0, 1.0)))
        c = torch.randn(3)
        exact = enc.minimize(c, 0.0, -math.inf, 60, stop_at_sign=False)
        assert exact.status == "Optimal"
        for true_min in (1e-4, 1e-3, 1e-2):
            r = enc.minimize(c, -exact.value + true_min, 0.0, 60)
            assert r.verdict == "verified"
            assert r.bound <= true_min + 1e-7, (seed, true_min, r.bound)


def test_unknown_complete_result_never_certifies(monkeypatch):
    """A timed-out solve's bound is not used as a certificate, whatever it says."""
    def fake_minimize(self, *args, **kwargs):
        return MilpResult("unknown", 1.0, math.inf, None, 0.0, "Time limit reached")

    monkeypatch.setattr(MilpEncoding, "minimize", fake_minimize)
    monkeypatch.setattr(MilpEncoding, "minimize_property", fake_minimize)
    net = small_relu_net(3, n_in=4, width=32, n_out=2)  # one row per input: the unknown row decides
    x = torch.rand(8, 4)
    y = net(x).argmax(1)
    cert = certify(net, x, y, 0.3, method="milp")
    assert not cert.certified.any() and (cert.margin_lower <= 0).all()  # the fake's bound 1.0 is never used
    assert all(v.verdict == "unknown" for v in cert.verdicts)


@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sshape_relaxation_on_any_interval(tanh, dtype):
    """Intervals from 1e-6 to 1e18 wide (and infinite): the band contains f; in float32 1 − λ used to round to 1
    beyond a width of ~1.5e7 and the band missed the function by up to 0.98 (sigmoid) and 1.95 (tanh)."""
    f = torch.tanh if tanh else torch.sigmoid
    g = torch.Generator().manual_seed(0)
    scale = 10 ** (torch.rand(4000, generator=g, dtype=torch.float64) * 24 - 6)
    a = torch.randn(4000, generator=g, dtype=torch.float64) * scale
    lo = a.to(dtype)
    up = torch.maximum(lo, (a + torch.rand(4000, generator=g, dtype=torch.float64) * 3 * scale).to(dtype))
    lo[:3], up[:3] = torch.tensor([-math.inf, -1.0, -math.inf], dtype=dtype), torch.tensor([2.0, math.inf, math.inf],
                                                                                              dtype=dtype)
    sl, bl, su, bu = sshape_relaxation(tanh, Bounds(lo, up))
    assert sl.dtype == dtype and torch.isfinite(sl).all() and not bl.isnan().any() and not bu.isnan().any()
    L, U = lo.double().clamp(-1e300, 1e300), up.double().clamp(-1e300, 1e300)
    t = torch.rand(300, 1, generator=g, dtype=torch.float64)
    z = torch.cat([L[None], U[None], L + t * (U - L), torch.zeros(1, 4000, dtype=torch.float64).clamp(L, U)])
    fz = f(z)
    assert (sl.double() * z + bl.double() <= fz).all()
    assert (fz <= su.double() * z + bu.double()).all()


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_crown_through_wide_sshape_layers_contains_the_outputs(act):
    """Pre-activation intervals ~1e9 wide: CROWN and α-CROWN must still contain every sampled output."""
    torch.manual_seed(0)
    for _ in range(10):
        net = nn.Sequential(nn.Linear(2, 3), act(), nn.Linear(3, 2))
        with torch.no_grad():
            net[0].weight.mul_(1e9 * torch.rand(1))
        x = torch.rand(1, 2)
        s = Box(x - 1, x + 1)
        pts = torch.cat([s.sample(2000, torch.Generator().manual_seed(1))[:, 0], x])
        with torch.no_grad():
            y = net.double()(pts.double())
        net.float()
        for b in (crown_bounds(net, s), alpha_crown_bounds(net, s, iterations=5)):
            assert (b.lower.double() <= y + 1e-6).all() and (y <= b.upper.double() + 1e-6).all()


def test_crown_output_is_intersected_with_ibp():
    """The output bound is never looser than IBP's (both hold), with and without a spec."""
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    with torch.no_grad():
        net[0].weight.mul_(1e9)
    x = torch.rand(2, 3)
    s = Box(x - 0.5, x + 0.5)
    from certkit.bounds.interval import interval_bounds
    from certkit.specs import margin_spec

    spec = margin_spec(torch.tensor([0, 1]), 4)
    for sp in (None, spec):
        c, i = crown_bounds(net, s, sp), interval_bounds(net, s, sp)
        assert (c.lower >= i.lower).all() and (c.upper <= i.upper).all()


def test_float32_ball_box_contains_the_exact_ball():
    """x ± eps rounded to nearest in float32 can cut off a sliver of the ball; the box is rounded outwards."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 10, generator=g)
    for eps in (1e-9, 1e-3, 0.3, 1000.0):
        s = ball("inf", x, eps, None)
        e = s.eps.double()
        assert (s.lower.double() <= x.double() - e).all() and (s.upper.double() >= x.double() + e).all()


def test_counterexamples_lie_in_the_exact_set():
    """The fuzz campaign's case: the only counterexamples lie at a corner of an L∞ ball of radius 1000 around a
    float32 input, where x ± eps rounded to float32 can leave the exact ball. Every counterexample the cascade
    returns lies in the ball as defined (float64, no tolerance) and violates the property there."""
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)
        with torch.no_grad():
            net[0].weight.copy_(torch.eye(8, 6, dtype=dtype))
            net[0].bias.fill_(1000.0)
            net[2].weight.fill_(1.0)
            net[2].bias.zero_()
        x = (torch.rand(1, 6, generator=g) + 0.1).to(dtype)
        eps = 1000.0
        s = ball("inf", x, eps, None)
        with torch.no_grad():  # the network's value at the exact corner x + eps, in float64
            top = float(net.double()(x.double() + eps)[0, 0])
            net.to(dtype)
        spec = LinearSpec(torch.tensor([[[-1.0]]], dtype=dtype), torch.tensor([[top - 1e-3]], dtype=dtype))
        v = verify_property(net, s, spec, stages=("attack",), timeout=10)[0]
        assert v.verdict == "falsified", dtype
        cex = v.counterexample.double()
        assert ((cex - x.double()).abs() <= eps).all(), dtype  # in the exact ball
        with torch.no_grad():
            assert float(-net.double()(cex)[0, 0]) + float(spec.d[0, 0]) <= 0
            net.to(dtype)


@pytest.mark.parametrize("seed", [104401, 104299])
def test_milp_numerics_found_by_the_campaign(seed):
    """104401: with a feasibility tolerance of 1e-8, HiGHS's presolve called a feasible LP infeasible ('verified'
    with a counterexample in the set). 104299: variable bounds up to 6e5 and a MIP declared optimal 0.003 above
    the true minimum (the reported bound above a real point's value)."""
    from certkit import fuzz

    st = fuzz.run_case(seed, ("verify", "milp"), 2.0)
    assert st.violations == [], st.violations


def test_the_float64_copy_follows_every_change_of_the_model():
    from certkit.nn import float64_copy

    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2))
    x = torch.randn(5, 3, dtype=torch.float64)
    first = float64_copy(model)
    assert float64_copy(model) is first and first[0].weight.dtype == torch.float64
    for change in (lambda: model[0].weight.data.mul_(2),  # no version bump
                   lambda: model[2].load_state_dict({"weight": torch.randn(2, 4), "bias": torch.zeros(2)}),
                   lambda: setattr(model[1], "negative_slope", 0.3)):
        change()
        again = float64_copy(model)
        assert torch.allclose(again(x).float(), model(x.float()), atol=1e-5)
