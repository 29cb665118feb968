"""Zonotope (DeepZ) domain: sampled containment, e-space, learned slopes, and the Cauchy estimate's accuracy."""

import math

import pytest
import torch
from torch import nn

from certkit import LinfBall, Normalize, Residual, interval_bounds, margin_spec, to_graph
from certkit import graph as g
from certkit.bounds.zonotope import Zonotope, cauchy_bounds, zonotope_bounds
from certkit.specs import Box
from conftest import assert_contained


def net(seed: int, act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize([0.4, 0.5], [0.3, 0.2]), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4).eval(), act(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), act()), nn.Sequential(nn.Conv2d(4, 4, 1), act())),
        nn.AvgPool2d(2), nn.ConvTranspose2d(4, 3, 2, stride=2), act(), nn.Conv2d(3, 3, 4, 2, 1), act(),
        nn.Flatten(), nn.Linear(48, 12), act(), nn.Linear(12, 5)).eval()


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_zonotope_contains_every_node_of_sampled_inputs(seed, act):
    model = net(seed, act)
    s = LinfBall(torch.rand(3, 2, 8, 8), 0.05)
    out, zs = zonotope_bounds(model, s, return_all=True)
    graph = to_graph(model)
    for p in s.sample(128, torch.Generator().manual_seed(seed)):
        vals = graph.forward(p, return_all=True)
        assert_contained(out.lower, out.upper, vals[graph.output])
        for z, v in zip(zs, vals):
            b = z.bounds()
            assert_contained(b.lower, b.upper, v)


def test_spec_is_applied_exactly_and_first_layer_equals_ibp():
    model = net(3)
    x = torch.rand(4, 2, 8, 8)
    s, spec = LinfBall(x, 0.02), margin_spec(model(x).argmax(1), 5)
    zb = zonotope_bounds(model, s, spec)
    for p in s.sample(128, torch.Generator().manual_seed(0)):
        assert_contained(zb.lower, zb.upper, spec.apply(model(p)))
    _, zs = zonotope_bounds(model, s, return_all=True)
    _, ib = interval_bounds(model, s, return_all=True)
    torch.testing.assert_close(zs[2].bounds().lower, ib[2].lower, rtol=1e-5, atol=1e-5)  # first conv: exact
    # the margin's bound is tighter than bounding the logits and subtracting
    naive = zonotope_bounds(model, s)
    y = model(x).argmax(1)
    naive_margin = naive.lower.gather(1, y[:, None]) - naive.upper
    assert (zb.lower.min(1).values >= naive_margin.scatter(1, y[:, None], math.inf).min(1).values - 1e-5).all()


def test_latent_points_stay_in_the_region_and_continue_the_forward_pass():
    model = net(4)
    graph = to_graph(model)
    s = Box(torch.rand(2, 2, 8, 8) * 0.5, torch.rand(2, 2, 8, 8) * 0.5 + 0.5)
    _, zs = zonotope_bounds(model, s, return_all=True)
    k = next(i for i, n in enumerate(graph.nodes) if type(n.op).__name__ == "ReLU")  # after the first ReLU
    z = zs[k]
    gen = torch.Generator().manual_seed(0)
    e = z.sample_e(gen) * 3  # outside the box: projection brings it back
    p = z.point(Zonotope.project(e))
    b = z.bounds()
    assert_contained(b.lower, b.upper, p)
    # continuing the propagation from the latent zonotope gives the same output region
    cont = zonotope_bounds(model, z, start=k)
    full = zonotope_bounds(model, s)
    torch.testing.assert_close(cont.lower, full.lower)


def test_learned_slopes_are_sound():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    s = LinfBall(torch.rand(3, 8), 0.2)
    for lam in (0.0, 0.3, 1.0):
        out = zonotope_bounds(model, s, slopes={2: torch.full((16,), lam)})
        for p in s.sample(256, torch.Generator().manual_seed(1)):
            assert_contained(out.lower, out.upper, model(p))


def test_cauchy_estimate_of_row_l1_norms_is_within_its_stated_error():
    """The median of k |Cauchy(0, s)| draws estimates s with relative standard error π/(2√k)."""
    torch.manual_seed(0)
    k = 400
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 1000)).eval()
    with torch.no_grad():  # an identity first map: two maps in a row are estimated, not computed exactly
        model[0].weight.copy_(torch.eye(300))
    s = Box(torch.zeros(1, 300) - 1, torch.ones(1, 300))
    est = cauchy_bounds(model, s, projections=k, generator=torch.Generator().manual_seed(0))
    exact = model[1].weight.abs().sum(1)
    rel = ((est.upper - est.lower)[0] / 2 - exact) / exact
    sd = math.pi / (2 * math.sqrt(k))
    assert rel.abs().mean() < sd  # the mean absolute error is ~0.8 sd
    assert (rel.abs() > 3 * sd).float().mean() < 0.01  # 3 sd: 0.27 % expected


def test_cauchy_bounds_are_exact_while_the_set_is_an_image_of_the_box():
    """Up to the first ReLU (and through it) the radii are computed, not estimated: equal to DeepZ's."""
    model = net(5)
    s = LinfBall(torch.rand(2, 2, 8, 8), 0.05)
    _, zs = zonotope_bounds(model, s, return_all=True)
    relus = [i for i, n in enumerate(g.to_graph(model).nodes) if isinstance(n.op, g.ReLU)]
    est = cauchy_bounds(model, s, projections=3, return_all=True, stop=relus[0])
    assert set(est) == {relus[0] - 1}
    first = zs[relus[0] - 1].bounds()
    torch.testing.assert_close(est[relus[0] - 1].lower, first.lower)
    torch.testing.assert_close(est[relus[0] - 1].upper, first.upper)


def test_cauchy_bounds_are_exact_for_every_term_group_mapped_at_most_once():
    """Each group of error terms (the input box's, each ReLU's) adds its exact radius while it has passed at most
    one non-diagonal map; here every estimate is of that kind, so one projection gives DeepZ's bounds exactly."""
    torch.manual_seed(3)
    model = nn.Sequential(Normalize([0.5], [0.25]), nn.ReLU(), nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4)).eval()
    s = LinfBall(torch.rand(2, 1, 4, 4), 0.1)
    _, zs = zonotope_bounds(model, s, return_all=True)
    est = cauchy_bounds(model, s, projections=1, return_all=True, generator=torch.Generator().manual_seed(0))
    relus = [i for i, n in enumerate(g.to_graph(model).nodes) if isinstance(n.op, g.ReLU)]
    assert set(est) == {i - 1 for i in relus}
    for i in relus:
        b = zs[i - 1].bounds()
        assert ((b.lower < 0) & (b.upper > 0)).any()  # both ReLUs have unstable neurons: new terms are made
        torch.testing.assert_close(est[i - 1].lower, b.lower)
        torch.testing.assert_close(est[i - 1].upper, b.upper)
    out = cauchy_bounds(model, s, projections=4000, generator=torch.Generator().manual_seed(0))
    exact = zs[-1].bounds()  # the output: both groups are mapped twice, so estimated
    rel = ((out.upper - out.lower) - (exact.upper - exact.lower)).abs() / (exact.upper - exact.lower)
    assert rel.max() < 0.1


def test_cauchy_bounds_track_the_zonotope_on_a_relu_net():
    model = net(5)
    s = LinfBall(torch.rand(2, 2, 8, 8), 0.02)
    exact = zonotope_bounds(model, s)
    est = cauchy_bounds(model, s, projections=2000, generator=torch.Generator().manual_seed(0))
    w_exact, w_est = exact.upper - exact.lower, est.upper - est.lower
    assert ((w_est - w_exact).abs() / w_exact).median() < 0.15
