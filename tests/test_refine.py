"""Intermediate bounds refined by branch and bound on hidden neurons: they contain every value the network takes
on the set, they contain the exact (MILP) bounds, they prove a neuron stable only when it is, and α for the
active neurons keeps the interval a tighter method proved."""

import math
import time

import pytest
import torch
from torch import nn

from certkit import graph as g
from certkit.bounds.interval import Bounds
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.specs import Box, LinearSpec
from certkit.verify.milp import MilpEncoding
from certkit.verify.refine import refinable, refine_bounds


def deep_mlp(seed: int, width: int = 16, depth: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    layers, n = [], 6
    for _ in range(depth):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    return nn.Sequential(*layers, nn.Linear(n, 3))


def setup(seed: int, radius: float = 0.4):
    net = deep_mlp(seed)
    x = torch.rand(1, 6)
    box = Box(x - radius, x + radius)
    spec = LinearSpec(torch.tensor([[[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]]), torch.zeros(1, 2))
    _, pre = crown_bounds(net, box, spec, return_all=True, intermediate="alpha")
    return net, box, spec, pre


@pytest.mark.parametrize("seed", range(2))
def test_refined_bounds_contain_the_network_and_the_exact_bounds(seed):
    net, box, spec, pre = setup(seed)
    assert refinable(net, pre)
    new, lower, stats = refine_bounds(net, box, pre, spec, time.perf_counter() + 60, per_neuron=0.5)
    graph = g.to_graph(net)
    with torch.no_grad():
        vals = graph.forward(box.sample(4000)[:, 0], return_all=True)
        out = net(box.sample(4000)[:, 0])
    assert (lower[0] <= (out @ spec.C[0].T).min(0).values + 1e-5).all()  # the spec's rows too
    proved = sum(p for _, p in stats.values())
    assert proved > 0  # something to test: neurons that α-CROWN left unstable were proved stable
    for j, b in new.items():
        v = vals[j].flatten(1)
        lo, up = b.lower.flatten(), b.upper.flatten()
        assert (v >= lo - 1e-5).all() and (v <= up + 1e-5).all(), f"node {j}: a value outside its refined bounds"
        assert (lo >= pre[j].lower.flatten() - 1e-6).all() and (up <= pre[j].upper.flatten() + 1e-6).all()
    # against the exact bounds (MILP, float64) of every refined neuron: the refined ones contain them
    j = max(stats)
    enc = MilpEncoding(net, box, pre, upto=j)
    lo, up = new[j].lower.flatten(), new[j].upper.flatten()
    changed = ((lo != pre[j].lower.flatten()) | (up != pre[j].upper.flatten())).nonzero().flatten().tolist()
    assert changed
    for k in changed[:5]:  # (each exact solve takes HiGHS about half a second)
        c = torch.zeros(1, lo.numel(), dtype=torch.float64)
        c[0, k] = 1
        r_lo = enc.minimize_property(c, torch.zeros(1), threshold=-math.inf, stop_at_sign=False, time_limit=30)
        r_up = enc.minimize_property(-c, torch.zeros(1), threshold=-math.inf, stop_at_sign=False, time_limit=30)
        assert r_lo.status == r_up.status == "Optimal"
        assert lo[k] <= r_lo.value + 1e-5 and up[k] >= -r_up.value - 1e-5
        if lo[k] >= 0 or up[k] <= 0:  # proved stable: it is
            assert r_lo.value >= -1e-6 or -r_up.value <= 1e-6


def test_refinement_stops_at_the_deadline_and_when_done():
    net, box, spec, pre = setup(0)
    t0 = time.perf_counter()
    refine_bounds(net, box, pre, spec, t0 + 0.5, per_neuron=5.0)
    assert time.perf_counter() - t0 < 3.0  # the searches get only the time left; one α-CROWN pass may follow
    calls = []

    def done(lo):
        calls.append(lo)
        return True

    new, lower, stats = refine_bounds(net, box, pre, spec, time.perf_counter() + 60, done=done)
    assert len(calls) == 1 and stats == {} and all(new[j] is pre[j] for j in pre)


def test_truncated_network_is_the_prefix_of_its_node():
    torch.manual_seed(0)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + h)

    net = Res()
    graph = g.to_graph(net)
    j = next(i for i, n in enumerate(graph.nodes) if n.name.startswith("b"))
    sub = g.Truncated(net, j)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(sub(x), graph.forward(x, return_all=True)[j])
        assert torch.equal(g.to_graph(sub).forward(x), sub(x))
    assert len(g.to_graph(sub).nodes) == 5 and sub.index == [0, 1, 2, 3, None]  # input, a, relu, b, flatten
    assert float(torch.nn.functional.mse_loss(sub.double()(x.double()), net.double().b(
        torch.relu(net.a(x.double()))))) < 1e-20  # a float64 copy (as counterexamples are checked) still runs


def test_alpha_keeps_an_active_neurons_interval():
    """A neuron that a tighter method proved active (l > 0) is the identity to CROWN, which forgets l: the later
    bounds could get looser than with the unstable interval. With α on active neurons they do not."""
    for seed in range(2):
        net, box, spec, pre = setup(seed)
        graph = g.to_graph(net)
        relus = [n.inputs[0] for n in graph.nodes if isinstance(n.op, g.PiecewiseLinear)]
        j = relus[1]
        lo = pre[j].lower.flatten().clone()
        enc = MilpEncoding(net, box, pre, upto=j)
        exact = lo.clone()
        for k in range(lo.numel()):
            c = torch.zeros(1, lo.numel(), dtype=torch.float64)
            c[0, k] = 1
            exact[k] = enc.minimize_property(c, torch.zeros(1), threshold=-math.inf, stop_at_sign=False).value
        tight = Bounds(torch.maximum(lo, exact - 1e-5).view_as(pre[j].lower), pre[j].upper)
        base = alpha_crown_bounds(net, box, spec, bound_upper=False, return_all=True, intermediate="alpha",
                                  given={i: pre[i] for i in relus[:2]})
        refined = alpha_crown_bounds(net, box, spec, bound_upper=False, return_all=True, intermediate="alpha",
                                     given={relus[0]: pre[relus[0]], j: tight})
        with torch.no_grad():
            vals = graph.forward(box.sample(3000)[:, 0], return_all=True)
        for i in relus[2:]:
            b = refined[1][i]
            v = vals[i].flatten(1)
            assert (v >= b.lower.flatten() - 1e-5).all() and (v <= b.upper.flatten() + 1e-5).all()
            width = (b.upper - b.lower).sum()
            assert width <= (base[1][i].upper - base[1][i].lower).sum() + 1e-4
        assert (refined[0].lower >= base[0].lower - 1e-4).all()


def test_round_robin_refines_once_after_the_first_round_and_restarts_the_searches(monkeypatch):
    """A clause left open by the first round gets the bounds refined (at most half of the time left), the
    clauses the refined bounds prove are done, and an open clause's search starts again on the refined bounds
    only where α-CROWN's bound on them beats the search's bound so far."""
    from certkit.specs import Property
    from certkit.verify import cascade

    made, calls = [], []

    class Slow:  # a branch and bound that never decides, using the time it is given; its bound stays -1
        def __init__(self, model, one, C, d, pre=None):
            made.append(pre)
            self.finished = False

        def run(self, seconds):
            time.sleep(seconds)
            return type("R", (), {"verdict": "unknown", "bound": -1.0})()

    monkeypatch.setattr(cascade, "ReluBab", Slow)
    monkeypatch.setattr(cascade, "refinable", lambda model, pre: True)
    net = nn.Sequential(nn.Linear(2, 2))
    one = Box(torch.full((1, 2), -1.0), torch.ones(1, 2))
    prop = Property(LinearSpec(torch.eye(2)[None], torch.full((1, 2), 5.0)), torch.tensor([0, 1]))
    for second, restarted in ((-0.5, True), (-2.0, False)):  # the refined bound of clause 1 (its search: -1)
        made.clear(), calls.clear()

        def fake_refine(model, one, pre, spec, deadline, done=None, second=second):
            calls.append(deadline - time.perf_counter())
            return {"refined": True}, torch.tensor([[0.5, second]]), {}  # proves the first clause's row

        monkeypatch.setattr(cascade, "refine_bounds", fake_refine)
        v = cascade.Verdict("unknown", "", {})
        lower = torch.full((2,), -1.0)
        out = cascade._round_robin(net, one, prop, [0, 1], lower, v, {"root": True}, 2.0, lambda: net, one,
                                   first_slice=0.2, search_share=0.0)
        assert len(calls) == 1 and calls[0] <= 0.5 * (2.0 - 0.4) + 0.05  # after the first round's 0.4 s
        assert made[:2] == [{"root": True}] * 2
        assert made[2:] == ([{"refined": True}] if restarted else [])  # clause 1 only
        assert lower[0] == 0.5 and out == {"refined": True} and v.verdict == "unknown"


def test_refinement_of_a_convolutional_layer_contains_the_network():
    """Layers are truncated at feature maps too (the truncated network's output is the flattened map)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    x = torch.rand(1, 1, 8, 8)
    box = Box(x - 0.2, x + 0.2)
    spec = LinearSpec(torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1))
    _, pre = crown_bounds(net, box, spec, return_all=True, intermediate="alpha")
    new, lower, stats = refine_bounds(net, box, pre, spec, time.perf_counter() + 20, per_neuron=0.2)
    assert len(stats) == 2 and sum(p for _, p in stats.values()) > 0
    with torch.no_grad():
        pts = box.sample(2000)[:, 0]
        vals = g.to_graph(net).forward(pts, return_all=True)
        out = net(pts)
    assert (lower[0, 0] <= (out[:, 0] - out[:, 1]).min() + 1e-5)
    for j, b in new.items():
        v = vals[j].flatten(1)
        assert (v >= b.lower.flatten() - 1e-5).all() and (v <= b.upper.flatten() + 1e-5).all()


@pytest.mark.parametrize("seed", range(2))
def test_round_robin_with_refinement_agrees_with_the_exact_milp(seed, monkeypatch):
    """End to end, with the real searches: the first round is too short to decide, the bounds are refined, and
    the verdict on a threshold just below / above the exact minimum (MILP) is verified / falsified."""
    from certkit.specs import Property
    from certkit.verify import cascade
    from certkit.verify.milp import milp_bounds

    calls = []
    real = cascade.refine_bounds

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(cascade, "refine_bounds", spy)
    net = deep_mlp(seed).double()
    x = torch.rand(1, 6, dtype=torch.float64)
    box = Box(x - 0.4, x + 0.4)
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    exact = milp_bounds(net, box, c.unsqueeze(0), time_limit=60)[0][0]
    assert exact.status == "Optimal"
    with torch.no_grad():
        spread = float((net(box.sample(1000)[:, 0]) @ c.T).max()) - exact.bound
    _, pre = crown_bounds(net, box, LinearSpec(c[None], None), return_all=True, intermediate="alpha")
    for shift, want in ((exact.bound - 0.05 * spread, "verified"), (exact.bound + 0.05 * spread, "falsified")):
        prop = Property(LinearSpec(c[None], torch.tensor([[-shift]], dtype=torch.float64)), torch.tensor([0]))
        v = cascade.Verdict("unknown", "", {})
        lower = torch.full((1,), -math.inf, dtype=torch.float64)
        cascade._round_robin(net, box, prop, [0], lower, v, pre, 60.0, lambda: net, box, first_slice=0.001,
                             search_share=0.0)
        assert v.verdict == want, (shift, exact.bound)
        if want == "falsified":
            with torch.no_grad():
                assert float(net(v.counterexample.double()) @ c[0]) <= shift + 1e-9
            assert bool(box.contains(v.counterexample.double())[0])
        else:
            assert float(lower[0]) <= exact.bound - shift + 1e-6  # the kept bound is below the true minimum
    assert calls  # refinement ran at least once
