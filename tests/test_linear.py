"""CROWN (linear backward bounds): golden bounds and sampled soundness."""

import pytest
import torch
from torch import nn

from certkit import L1Ball, L2Ball, LinfBall, Normalize, Residual, interval_bounds, margin_spec, to_graph
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.graph import UnsupportedOpError
from certkit.specs import Box
from certkit.verify import certify
from conftest import assert_contained, golden_model


def relu_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        Normalize([0.4, 0.5], [0.3, 0.2]), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 4, 1)),
        nn.AvgPool2d(2), nn.ConvTranspose2d(4, 3, 2, stride=2), nn.ReLU(), nn.Conv2d(3, 3, 4, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 16, 12), nn.Unflatten(1, (3, 2, 2)), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5),
    )
    m[2].running_mean.uniform_(-0.5, 0.5)
    m[2].running_var.uniform_(0.3, 2)
    return m.eval()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ball_cls, eps", [(LinfBall, 0.03), (L2Ball, 0.3), (L1Ball, 0.6)])
@pytest.mark.parametrize("intermediate", ["crown", "ibp"])
def test_crown_contains_sampled_outputs_and_pre_activations(seed, ball_cls, eps, intermediate):
    model = relu_net(seed)
    s = ball_cls(torch.rand(3, 2, 8, 8), eps)
    out, pre = crown_bounds(model, s, return_all=True, intermediate=intermediate)
    graph = to_graph(model)
    for p in s.sample(128, torch.Generator().manual_seed(seed)):
        vals = graph.forward(p, return_all=True)
        assert_contained(out.lower, out.upper, vals[graph.output])
        for j, b in pre.items():
            assert_contained(b.lower, b.upper, vals[j])


def test_crown_with_spec_is_sound_and_tighter_than_ibp_on_average():
    model = relu_net(4)
    x = torch.rand(6, 2, 8, 8)
    y = model(x).argmax(1)
    s, spec = LinfBall(x, 0.02), margin_spec(y, 5)
    crown = crown_bounds(model, s, spec)
    ibp = interval_bounds(model, s, spec)
    for p in s.sample(128, torch.Generator().manual_seed(0)):
        assert_contained(crown.lower, crown.upper, spec.apply(model(p)))
    assert crown.lower.mean() > ibp.lower.mean()
    box = crown_bounds(model, Box(s.lower, s.upper), spec)  # a box input gives the same bound as the L∞ ball
    torch.testing.assert_close(box.lower, crown.lower, rtol=1e-4, atol=1e-5)


def test_crown_certified_inputs_are_never_broken():
    from certkit.attacks import pgd

    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.rand(200, 10)
    y = m(x).argmax(1)
    for eps in (0.01, 0.03):
        res = pgd(m, x, y, eps, steps=50, restarts=3, loss="margin")
        ibp = certify(m, x, y, eps, method="ibp")
        for method in ("crown", "crown-ibp"):
            cert = certify(m, x, y, eps, method=method)
            assert not (cert.certified & res.success).any()
            assert cert.certified.sum() >= ibp.certified.sum() and cert.certified.sum() > 10


def test_unrelaxed_ops_raise():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True), nn.Flatten())
    with pytest.raises(UnsupportedOpError, match="return_indices"):
        crown_bounds(m, LinfBall(torch.rand(2, 1, 8, 8), 0.1))


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_sshape_relaxation_bounds_the_function(act):
    from certkit.bounds.interval import Bounds
    from certkit.bounds.relax import sshape_relaxation

    f = torch.sigmoid if act is nn.Sigmoid else torch.tanh
    torch.manual_seed(0)
    a, b = torch.randn(2, 2000) * 4
    lo, up = torch.minimum(a, b), torch.maximum(a, b)
    lo[:5] = up[:5]  # degenerate intervals
    sl, bl, su, bu = sshape_relaxation(act is nn.Tanh, Bounds(lo, up))
    z = lo + torch.rand(64, 2000) * (up - lo)
    z = torch.cat([z, lo[None], up[None]])
    assert (f(z) >= sl * z + bl - 1e-6).all() and (f(z) <= su * z + bu + 1e-6).all()
    convex = (up <= 0) & (up > lo + 0.1)  # both are convex left of 0: there the upper line is the chord
    torch.testing.assert_close((su * lo + bu)[convex], f(lo)[convex], atol=1e-5, rtol=1e-5)


def crown_is_sound_and_beats_ibp(model, s) -> None:
    """CROWN's output and pre-activation bounds contain 256 sampled points' values, and are tighter than IBP's."""
    out, pre = crown_bounds(model, s, return_all=True)
    graph = to_graph(model)
    for p in s.sample(256, torch.Generator().manual_seed(0)):
        vals = graph.forward(p, return_all=True)
        assert_contained(out.lower, out.upper, vals[graph.output])
        for j, b in pre.items():
            assert_contained(b.lower, b.upper, vals[j])
    ibp = interval_bounds(model, s)
    assert (out.upper - out.lower).mean() < (ibp.upper - ibp.lower).mean()


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_crown_through_sigmoid_and_tanh_is_sound_and_beats_ibp(act):
    torch.manual_seed(2)
    model = nn.Sequential(Normalize([0.5], [0.3]), nn.Conv2d(1, 4, 3, 2, 1), act(), nn.Flatten(),
                          nn.Linear(64, 16), act(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    s = LinfBall(torch.rand(3, 1, 8, 8), 0.05)
    crown_is_sound_and_beats_ibp(model, s)


def test_golden_crown_bounds_of_auto_lirpa(shared):
    model, data = golden_model(shared)
    for norm, cls in (("inf", LinfBall), ("2", L2Ball)):
        b = crown_bounds(model, cls(data["data"], 0.01, domain=None))
        torch.testing.assert_close(b.lower, data[f"l_{norm}_CROWN_lb"].detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.upper, data[f"l_{norm}_CROWN_ub"].detach(), rtol=1e-4, atol=1e-6)
        # CROWN-IBP: equal in L∞; in L2 never looser, because our IBP intermediates use the exact per-position
        # norm where auto_LiRPA charges the whole kernel (see test_golden_ibp_bounds_of_auto_lirpa)
        b = crown_bounds(model, cls(data["data"], 0.01, domain=None), intermediate="ibp")
        ref_l, ref_u = data[f"l_{norm}_CROWN-IBP_lb"].detach(), data[f"l_{norm}_CROWN-IBP_ub"].detach()
        if norm == "inf":
            torch.testing.assert_close(b.lower, ref_l, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(b.upper, ref_u, rtol=1e-4, atol=1e-6)
        else:
            assert (b.lower >= ref_l - 1e-6).all() and (b.upper <= ref_u + 1e-6).all()


@pytest.mark.parametrize("ball_cls, eps", [(LinfBall, 0.03), (L2Ball, 0.3)])
def test_alpha_crown_is_sound_and_never_looser_than_crown(ball_cls, eps):
    model = relu_net(5)
    x = torch.rand(4, 2, 8, 8)
    s, spec = ball_cls(x, eps), margin_spec(model(x).argmax(1), 5)
    for sp in (None, spec):
        crown = crown_bounds(model, s, sp)
        alpha = alpha_crown_bounds(model, s, sp, iterations=10)
        assert (alpha.lower >= crown.lower - 1e-6).all() and (alpha.upper <= crown.upper + 1e-6).all()
        assert (alpha.lower > crown.lower + 1e-4).any()  # the optimisation does something
        for p in s.sample(128, torch.Generator().manual_seed(1)):
            out = model(p) if sp is None else sp.apply(model(p))
            assert_contained(alpha.lower, alpha.upper, out)


@pytest.mark.parametrize("norm", ["l_inf", "l_2"])
def test_alpha_crown_at_least_as_tight_as_auto_lirpa_optimized(shared, norm):
    model, data = golden_model(shared)
    x = data["data"]
    s = (LinfBall if norm == "l_inf" else L2Ball)(x, 0.01)
    ours = alpha_crown_bounds(model, s, iterations=20, lr=0.1)
    ref_lo, ref_up = data[f"{norm}_CROWN-Optimized_lb"], data[f"{norm}_CROWN-Optimized_ub"]
    assert (ours.lower >= ref_lo - 5e-6).all() and (ours.upper <= ref_up + 5e-6).all()


@pytest.mark.parametrize("k1, s1, p1, k2, s2, p2", [(5, 2, 2, 4, 2, 1), (3, 1, 1, 3, 2, 0), (4, 2, 1, 3, 1, 1)])
def test_patch_backward_of_the_second_conv_equals_the_dense_pass(monkeypatch, k1, s1, p1, k2, s2, p2):
    import certkit.bounds.linear as lin

    torch.manual_seed(k1 + k2)
    model = nn.Sequential(Normalize([0.3, 0.6], [0.5, 0.2]), nn.Conv2d(2, 4, k1, s1, p1), nn.ReLU(),
                          nn.Conv2d(4, 5, k2, s2, p2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(1, 2, 12, 12))
    model.eval()
    for s in (LinfBall(torch.rand(3, 2, 12, 12), 0.05), Box(torch.rand(3, 2, 12, 12) * 0.4,
                                                            torch.rand(3, 2, 12, 12) * 0.4 + 0.5)):
        calls = []
        real = lin._patch_bounds
        monkeypatch.setattr(lin, "_patch_bounds", lambda *a: calls.append(1) or real(*a))
        fast, pre_fast = crown_bounds(model, s, return_all=True)
        assert calls  # the patch path ran
        monkeypatch.setattr(lin, "_patch_bounds", lambda *a: None)
        dense, pre_dense = crown_bounds(model, s, return_all=True)
        for k in pre_dense:
            torch.testing.assert_close(pre_fast[k].lower, pre_dense[k].lower, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pre_fast[k].upper, pre_dense[k].upper, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast.lower, dense.lower, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 1)])
def test_crown_through_maxpool_is_sound_and_tighter_than_ibp(pool):
    torch.manual_seed(4)
    model = nn.Sequential(Normalize([0.5], [0.3]), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                          nn.LazyLinear(12), nn.ReLU(), nn.Linear(12, 3))
    model(torch.rand(1, 1, 8, 8))
    model.eval()
    s = LinfBall(torch.rand(3, 1, 8, 8), 0.03)
    crown_is_sound_and_beats_ibp(model, s)
    alpha = alpha_crown_bounds(model, s, iterations=5)
    for p in s.sample(64, torch.Generator().manual_seed(1)):
        assert_contained(alpha.lower, alpha.upper, model(p))


def test_a_passed_deadline_stops_the_intermediate_optimisation_soundly():
    """``deadline`` in the past: intermediate α-CROWN does no step and gives CROWN's bounds; a later deadline
    gives bounds at least as tight; both contain sampled outputs."""
    import time

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(2, 4)
    s = Box(x - 0.3, x + 0.3)
    plain = crown_bounds(net, s)
    late = crown_bounds(net, s, intermediate="alpha", deadline=time.perf_counter() - 1)
    tight = crown_bounds(net, s, intermediate="alpha", deadline=time.perf_counter() + 60)
    assert torch.allclose(late.lower, plain.lower) and torch.allclose(late.upper, plain.upper)
    assert (tight.lower >= plain.lower - 1e-5).all() and (tight.upper <= plain.upper + 1e-5).all()
    with torch.no_grad():
        y = net(s.sample(2000, torch.Generator().manual_seed(1)).flatten(0, 1)).view(2000, 2, 3).transpose(0, 1)
    assert (tight.lower.unsqueeze(1) <= y + 1e-5).all() and (y <= tight.upper.unsqueeze(1) + 1e-5).all()


def test_a_cutoff_in_the_past_leaves_ibp_bounds_and_stays_sound():
    """Past ``cutoff`` CROWN gives the neurons it has not bounded yet IBP's bounds: still sound (sampled points
    are contained), never looser than IBP, and at the cutoff every intermediate layer is IBP's."""
    import time

    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3)).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    box = Box(x - 0.2, x + 0.2)
    ibp, ibp_pre = interval_bounds(m, box, return_all=True)
    full = crown_bounds(m, box)
    late, pre = crown_bounds(m, box, cutoff=time.perf_counter() - 1, return_all=True)
    for j, b in pre.items():
        assert torch.equal(b.lower, ibp_pre[j].lower) and torch.equal(b.upper, ibp_pre[j].upper)
    samples = box.lower + torch.rand(2000, 5, 6, dtype=torch.float64) * (box.upper - box.lower)
    with torch.no_grad():
        y = m(samples.view(-1, 6)).view(2000, 5, 3)
    for b in (late, alpha_crown_bounds(m, box, cutoff=time.perf_counter() - 1, iterations=3)):
        assert_contained(b.lower, b.upper, y)
        assert (b.lower >= ibp.lower - 1e-12).all() and (b.upper <= ibp.upper + 1e-12).all()
    assert (full.lower >= late.lower - 1e-9).all() and (full.lower > late.lower + 1e-6).any()  # CROWN's are tighter


@pytest.mark.parametrize("negative_slope", [0.0, 0.1])
def test_cached_relaxations_give_the_same_bounds(negative_slope):
    """Passes that share precomputed relaxations (branch and bound, α-CROWN's iterations) bound exactly as passes
    that derive them from the pre-activation bounds, with and without optimised slopes, for ReLU and LeakyReLU."""
    from certkit.bounds.linear import _backward, relu_relaxations

    torch.manual_seed(0)
    act = nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU()
    model = nn.Sequential(nn.Linear(6, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 3)).eval()
    s = LinfBall(torch.rand(2, 6), 0.3)
    _, pre = crown_bounds(model, s, return_all=True)
    graph = to_graph(model)
    shapes = [tuple(v.shape[1:]) for v in graph.forward(s.x, return_all=True)]
    A = torch.randn(2, 4, 3)
    alphas = {j: torch.rand(2, 4, *shapes[j]) for j in pre}
    relax = relu_relaxations(graph, pre)
    assert sum(bool(r[0].any()) for r in relax.values()) == 2  # both layers have unstable neurons
    for a in (None, alphas):
        plain = _backward(graph, graph.output, A, shapes, pre, s, alphas=a)
        cached = _backward(graph, graph.output, A, shapes, pre, s, alphas=a, relax=relax)
        torch.testing.assert_close(cached, plain, rtol=0, atol=0)
