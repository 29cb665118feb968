"""LeakyReLU, elementwise affine maps (constants of any broadcastable shape) and Reindex (transposes, reshapes)
in every domain: sampled containment for IBP, CROWN, α-CROWN and DeepZ; the MILP's minimum between CROWN's bound
and the sampled minimum, and branch and bound agreeing with it. Also: the transfer tables name what they support."""

import pytest
import torch
from torch import nn

from certkit import Box, LinfBall, interval_bounds, to_graph
from certkit import graph as g
from certkit.bounds import interval, linear, zonotope
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.bounds.zonotope import zonotope_bounds
from certkit.nn import Affine, Reindex
from certkit.verify.bab import bab
from certkit.verify.milp import MilpEncoding
from conftest import assert_contained


def leaky_net(seed: int, slope: float = 0.1) -> nn.Module:
    """NHWC input → transpose to NCHW, per-pixel affine, conv, LeakyReLU, a reshape that is not a flatten,
    LeakyReLU, linear layers."""
    torch.manual_seed(seed)
    return nn.Sequential(
        Reindex.of(lambda t: t.permute(0, 3, 1, 2), (5, 5, 2)),
        Affine(torch.rand(1, 2, 5, 5) * 2 - 0.5, torch.randn(1, 1, 5, 1) * 0.1),
        nn.Conv2d(2, 3, 3), nn.LeakyReLU(slope),
        Reindex.of(lambda t: t.transpose(2, 3).reshape(1, 9, 3), (3, 3, 3)),
        nn.Flatten(), nn.Linear(27, 12), nn.LeakyReLU(slope), nn.Linear(12, 4),
    ).double().eval()


def test_the_ops_convert_and_match_forward():
    m = leaky_net(0)
    kinds = [type(n.op).__name__ for n in to_graph(m).nodes]
    assert kinds.count("Reindex") == 2 and kinds.count("LeakyReLU") == 2 and "ElementwiseAffine" in kinds
    x = torch.rand(3, 5, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(to_graph(m).forward(x), m(x))


@pytest.mark.parametrize("seed", range(3))
def test_every_domain_contains_sampled_values(seed):
    m = leaky_net(seed, slope=[0.0, 0.1, 0.5][seed])
    s = LinfBall(torch.rand(2, 5, 5, 2, dtype=torch.float64), 0.1)
    graph = to_graph(m)
    ibp, ibp_all = interval_bounds(m, s, return_all=True)
    crown, pre = crown_bounds(m, s, return_all=True)
    alpha = alpha_crown_bounds(m, s, iterations=10)
    deepz = zonotope_bounds(m, s)
    for p in s.sample(300, torch.Generator().manual_seed(seed)):
        vals = graph.forward(p, return_all=True)
        for b in (ibp, crown, alpha, deepz):
            assert_contained(b.lower, b.upper, vals[graph.output])
        for v, b in zip(vals, ibp_all):
            assert_contained(b.lower, b.upper, v)
        for j, b in pre.items():
            assert_contained(b.lower, b.upper, vals[j])
    assert (crown.upper - crown.lower).mean() <= (ibp.upper - ibp.lower).mean()


@pytest.mark.parametrize("seed", range(3))
def test_milp_and_branch_and_bound_agree_with_samples(seed):
    m = leaky_net(seed + 10, slope=0.2)
    x = torch.rand(1, 5, 5, 2, dtype=torch.float64)
    s = Box(x - 0.08, x + 0.08)
    c = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    res = MilpEncoding(m, s).minimize(c, threshold=-1e9, stop_at_sign=False, time_limit=60)
    assert res.verdict == "verified" and res.status == "Optimal", res
    pts = s.sample(4000, torch.Generator().manual_seed(seed))[:, 0]
    with torch.no_grad():
        sampled = float((m(pts) @ c).min())
    crown = linear_bound(m, s, c)
    assert crown - 1e-6 <= res.bound <= sampled + 1e-6
    # branch and bound decides min c·f > t for t on either side of the exact minimum
    for t, expect in ((res.bound - 0.05, "verified"), (res.bound + 0.05, "falsified")):
        out = bab(m, s, c.view(1, -1), torch.tensor([-t], dtype=torch.float64), time_limit=30)
        assert out.verdict == expect, (t, out)


def linear_bound(m, s, c) -> float:
    from certkit.specs import LinearSpec

    with torch.no_grad():
        return float(crown_bounds(m, s, LinearSpec(c.view(1, 1, -1))).lower)


def test_leaky_relu_slopes_outside_zero_one_are_refused():
    with pytest.raises(g.UnsupportedOpError, match="negative_slope"):
        to_graph(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(1.5)))


def test_each_domain_names_what_it_supports():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2))
    s = LinfBall(torch.rand(1, 1, 6, 6), 0.1)
    with pytest.raises(g.UnsupportedOpError, match="DeepZ.*MaxPool2d.*supports: .*LeakyReLU"):
        zonotope_bounds(m, s)
    for table in (interval.RULES, linear.RULES):
        assert {"Linear", "Conv2d", "Reindex", "LeakyReLU", "ElementwiseAffine", "MaxPool2d"} <= \
            set(g.supported_ops(table))
    assert "MaxPool2d" not in g.supported_ops(zonotope.RULES)
