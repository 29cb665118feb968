"""Soundness of IBP: sampled points of the input set (including box corners) never leave the bounds."""

import pytest
import torch
from torch import nn

from certkit import L1Ball, L2Ball, LinfBall, Normalize, Residual, interval_bounds, margin_spec, to_graph
from certkit.graph import OP_TYPES
from certkit.specs import Box, LinearSpec
from conftest import assert_contained, golden_model
from test_graph import every_op_model


def random_net(seed: int, kind: str) -> nn.Module:
    torch.manual_seed(seed)
    act = [nn.ReLU, nn.Sigmoid, nn.Tanh][seed % 3]
    if kind == "mlp":
        return nn.Sequential(Normalize([0.3], [0.7]), nn.Flatten(), nn.Linear(12, 16), act(), nn.Linear(16, 16),
                             act(), nn.Linear(16, 5))
    m = every_op_model()
    m[4].running_mean.uniform_(-0.5, 0.5)
    m[4].running_var.uniform_(0.2, 2)
    m[4].weight.data.uniform_(-1.5, 1.5)  # negative BN scales too
    return m.eval()


def check_containment(model, s, n=256, spec=None):
    b, all_bounds = interval_bounds(model, s, spec=spec, return_all=True)
    pts = s.sample(n, torch.Generator().manual_seed(0))
    graph = to_graph(model)
    for p in pts:
        vals = graph.forward(p, return_all=True)
        for v, nb in zip(vals, all_bounds):  # every intermediate node, not only the output
            assert_contained(nb.lower, nb.upper, v)
        out = vals[graph.output] if spec is None else spec.apply(vals[graph.output])
        assert_contained(b.lower, b.upper, out)
    return b


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ball_cls", [LinfBall, L2Ball, L1Ball])
def test_containment_random_nets(seed, ball_cls):
    kind = "mlp" if seed % 2 else "conv"
    model = random_net(seed, kind)
    x = torch.rand(3, 1, 3, 4) if kind == "mlp" else torch.rand(3, 2, 16, 16)
    eps = {LinfBall: 0.05, L2Ball: 0.5, L1Ball: 1.0}[ball_cls]
    check_containment(model, ball_cls(x, eps))


def test_containment_with_margin_spec_and_box():
    model = random_net(1, "mlp")
    x = torch.rand(4, 1, 3, 4)
    y = torch.tensor([0, 1, 2, 3])
    check_containment(model, LinfBall(x, 0.1), spec=margin_spec(y, 5))
    spec = LinearSpec(torch.randn(4, 3, 5), torch.randn(4, 3))
    check_containment(model, Box(x - 0.1, x + 0.2), spec=spec)


def test_every_op_has_an_interval_transfer():
    model = random_net(0, "conv")
    present = {type(n.op) for n in to_graph(model).nodes}
    assert present == set(OP_TYPES)  # the containment tests above exercise every primitive op


def test_spec_folding_is_at_least_as_tight():
    model = random_net(3, "mlp")
    x = torch.rand(5, 1, 3, 4)
    y = torch.randint(0, 5, (5,))
    s = LinfBall(x, 0.05)
    folded = interval_bounds(model, s, margin_spec(y, 5))
    out = interval_bounds(model, s)
    naive_l, _ = margin_spec(y, 5).bound(out.lower, out.upper)
    assert (folded.lower >= naive_l - 1e-6).all()


def test_eps_zero_gives_the_forward_pass():
    model = random_net(0, "conv")
    x = torch.rand(2, 2, 16, 16)
    b = interval_bounds(model, LinfBall(x, 0.0))
    assert torch.allclose(b.lower, model(x), atol=1e-5) and torch.allclose(b.upper, model(x), atol=1e-5)


def test_bounds_do_not_depend_on_the_rest_of_the_batch():
    model = random_net(2, "conv")
    x = torch.rand(6, 2, 16, 16)
    eps = torch.tensor([0.01, 0.02, 0.0, 0.05, 0.01, 0.03])
    for cls in (LinfBall, L2Ball):
        full = interval_bounds(model, cls(x, eps))
        for i in (0, 3):
            one = interval_bounds(model, cls(x[i:i + 1], eps[i:i + 1]))
            assert torch.allclose(full.lower[i], one.lower[0], atol=1e-6)


def test_float64_and_gradients():
    model = random_net(1, "mlp").double()
    x = torch.rand(2, 1, 3, 4, dtype=torch.float64)
    b = interval_bounds(model, LinfBall(x, 0.1))
    assert b.lower.dtype == torch.float64
    b.lower.sum().backward()
    assert model[2].weight.grad is not None


def test_l2_first_layer_bound_is_the_exact_dual_norm():
    lin = nn.Linear(6, 3)
    x = torch.full((1, 6), 0.5)
    b = interval_bounds(nn.Sequential(lin), L2Ball(x, 0.1, domain=None))
    expected = lin(x) - 0.1 * lin.weight.norm(dim=1)
    assert torch.allclose(b.lower, expected, atol=1e-6)


def test_residual_and_nested_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))),
                          nn.ReLU(), nn.Linear(8, 3))
    check_containment(model, LinfBall(torch.rand(3, 2, 4), 0.2))


def test_golden_ibp_bounds_of_auto_lirpa(shared):
    model, data = golden_model(shared)
    x = data["data"]
    for norm, cls in (("inf", LinfBall), ("2", L2Ball)):
        ref_l, ref_u = data[f"l_{norm}_IBP_lb"].detach(), data[f"l_{norm}_IBP_ub"].detach()
        # auto_LiRPA charges every conv output the norm of its whole kernel; with that option we agree exactly
        b = interval_bounds(model, cls(x, 0.01, domain=None), whole_kernel_norms=True)
        torch.testing.assert_close(b.lower, ref_l, rtol=1e-4, atol=2e-7)
        torch.testing.assert_close(b.upper, ref_u, rtol=1e-4, atol=2e-7)
        # the default, exact per-position norm is never looser (up to the outward rounding of the float32 box,
        # a few ulps: 2.8e-6 here, see docs/soundness.md), and sound
        tight = check_containment(model, cls(x, 0.01, domain=None), n=64)
        assert (tight.lower >= ref_l - 1e-5).all() and (tight.upper <= ref_u + 1e-5).all()
        if norm == "2":
            assert (tight.lower > ref_l + 1e-4).any()


def test_wrong_input_shape_is_a_clear_error():
    from certkit.specs import SpecError

    model = random_net(1, "mlp")
    with pytest.raises(SpecError, match=r"do not fit the model at node '.*' \(Linear\)"):
        interval_bounds(model, LinfBall(torch.rand(2, 1, 5, 5), 0.1))


def test_float64_recheck_keeps_sound_verdicts():
    from certkit.verify import certify

    model = random_net(3, "mlp")
    x = torch.rand(20, 1, 3, 4)
    y = model(x).argmax(1)
    c32 = certify(model, x, y, 0.01)
    c64 = certify(model, x, y, 0.01, float64_check=True)
    assert c32.certified.any()
    assert torch.equal(c64.certified, c32.certified & c64.certified)  # never certifies more
    assert c64.certified.sum() >= c32.certified.sum() - 1  # and disagrees only at round-off margins


@pytest.mark.parametrize("ball_cls", [L2Ball, L1Ball])
def test_one_layer_net_with_spec_over_lp_balls(ball_cls):
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.2], [0.5]), nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(5, 1, 3, 4)
    y = torch.randint(0, 4, (5,))
    b = check_containment(model, ball_cls(x, 0.3), spec=margin_spec(y, 4))
    box = interval_bounds(model, Box(*[getattr(ball_cls(x, 0.3), k) for k in ("lower", "upper")]), margin_spec(y, 4))
    assert (b.lower >= box.lower - 1e-6).all() and (b.lower > box.lower + 1e-3).any()  # the ball bound helps
