"""Branch and bound with β-CROWN: sound domain bounds, exact answers where the MILP is exact, clear errors."""

import pytest
import torch
from torch import nn

from certkit import graph as g
from certkit.specs import Box, L2Ball, LinfBall, SpecError
from certkit.verify.bab import ReluBab, _Problem, bab
from certkit.verify.milp import milp_bounds


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 1)).double()


def convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1), nn.ReLU(), nn.Conv2d(4, 4, 2, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 1)).double()


CASES = [(mlp, s, (1, 5)) for s in range(8)] + [(convnet, s, (1, 1, 6, 6)) for s in range(3)]


@pytest.mark.parametrize("make,seed,shape,fsb", [(*c, 1) for c in CASES] + [(*c, 4) for c in CASES[::3]])
def test_bab_agrees_with_the_exact_milp(make, seed, shape, fsb):
    net = make(seed)
    x = torch.rand(*shape, dtype=torch.float64)
    s = Box(x - 0.3, x + 0.3)
    C = torch.ones(1, 1, dtype=torch.float64)
    exact = milp_bounds(net, s, C.unsqueeze(0), time_limit=60)[0][0]
    assert exact.status == "Optimal"
    with torch.no_grad():
        spread = float(net(s.sample(1000)[:, 0]).max()) - exact.bound  # how far the output moves over the box
    gap = 0.1 * spread
    for shift, want in ((exact.bound - gap, "verified"), (exact.bound + gap, "falsified")):
        r = bab(net, s, C, torch.tensor([-shift], dtype=torch.float64), time_limit=300, batch=8, fsb=fsb)
        assert r.verdict == want
        minimum = exact.bound - shift
        if want == "verified":
            assert 0 < r.bound <= minimum + 1e-6  # a lower bound of the true minimum
        else:
            assert s.contains(r.x).all()
            assert r.value <= 0 and abs(float(net(r.x).detach()[0, 0]) - shift - r.value) < 1e-9
            assert r.value >= minimum - 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_every_domain_bound_holds_on_sampled_points_of_its_domain(seed):
    """Random splits (taken from the sign pattern of a point, so the domain is not empty), random slopes and
    large multipliers β: the bound must stay below c·f(x) at every sampled point that satisfies the splits. A
    wrong sign of the β term, or a split relaxation that is not clipped, fails this."""
    net = mlp(seed)
    torch.manual_seed(100 + seed)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = Box(x - 0.4, x + 0.4)
    C, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    prob = _Problem(net, s, C, d, None)
    graph = g.to_graph(net)
    pts = s.sample(20000, torch.Generator().manual_seed(seed))[:, 0]
    vals = graph.forward(pts, return_all=True)
    x0 = pts[:1]
    ref = graph.forward(x0, return_all=True)
    D = 4
    split, alpha, beta = {}, {}, {}
    for j, u in prob.unstable.items():
        sign = torch.where(ref[j].flatten()[u] >= 0, 1, -1).to(torch.int8)
        keep = torch.rand(D, len(u)) < 0.5  # each domain splits a random half of the neurons
        split[j] = torch.where(keep, sign.expand(D, -1), torch.zeros_like(sign).expand(D, -1))
        alpha[j] = torch.rand(D, 1, len(u), dtype=torch.float64)
        beta[j] = 5 * torch.rand(D, 1, len(u), dtype=torch.float64)
    low, *_ = prob.bound(split, alpha, beta, iterations=0, lr=0.1)
    f = vals[graph.output][:, 0]
    checked = 0
    for k in range(D):
        inside = torch.ones(len(pts), dtype=torch.bool)
        for j, u in prob.unstable.items():
            z = vals[j].flatten(1)[:, u]
            sk = split[j][k].to(z.dtype)
            inside &= ((sk * z) >= 0).all(1)
        assert inside.any()
        checked += int(inside.sum())
        assert (f[inside] >= low[k, 0] - 1e-9).all()
    assert checked > 100


def test_a_domain_bound_does_not_depend_on_the_domains_bounded_with_it():
    """Proved domains leave the α/β optimisation at their first proving iterate; the others must get exactly
    what they would get alone, and never less than their unoptimised bound. The shift puts some of the random
    domains above 0 at once and leaves others open after the optimisation."""
    net = mlp(1)
    torch.manual_seed(7)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = Box(x - 0.4, x + 0.4)
    C = torch.ones(1, 1, dtype=torch.float64)
    prob0 = _Problem(net, s, C, torch.zeros(1, dtype=torch.float64), None)
    D = 16
    split, alpha, beta = {}, {}, {}
    for j, u in prob0.unstable.items():
        split[j] = torch.randint(-1, 2, (D, len(u)), dtype=torch.int8)
        alpha[j] = torch.rand(D, 1, len(u), dtype=torch.float64)
        beta[j] = torch.rand(D, 1, len(u), dtype=torch.float64)
    start, *_ = prob0.bound(split, alpha, beta, iterations=0, lr=0.1)
    opt, *_ = prob0.bound(split, alpha, beta, iterations=5, lr=0.1)
    shift = float(start[:, 0].max() + opt[:, 0].min()) / 2  # one domain proved before any step, one left open
    assert float(start[:, 0].max()) > shift > float(opt[:, 0].min())
    prob = _Problem(net, s, C, torch.tensor([-shift], dtype=torch.float64), None)
    low, a_out, _, scores, _ = prob.bound(split, alpha, beta, iterations=5, lr=0.1)
    proved = low[:, 0] > 0
    assert proved.any() and not proved.all()
    assert (low[:, 0] >= start[:, 0] - shift - 1e-12).all()
    assert (scores[start[:, 0] > shift] == -1).all()  # left before the last pass: no scores needed
    for k in (~proved).nonzero().squeeze(1).tolist():
        one = {j: t[k:k + 1] for j, t in split.items()}
        alone, a1, *_ = prob.bound(one, {j: t[k:k + 1] for j, t in alpha.items()},
                                   {j: t[k:k + 1] for j, t in beta.items()}, iterations=5, lr=0.1)
        assert torch.allclose(alone[0], low[k], rtol=0, atol=1e-9)
        assert all(torch.allclose(a1[j][0], a_out[j][k], atol=1e-9) for j in a1)


def test_time_limit_gives_unknown_with_a_sound_bound():
    net = mlp(3)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = LinfBall(x, 0.5, domain=None)
    C = torch.ones(1, 1, dtype=torch.float64)
    exact = milp_bounds(net, Box(s.lower, s.upper), C.unsqueeze(0), time_limit=60)[0][0].bound
    r = bab(net, s, C, torch.tensor([-exact + 1e-7], dtype=torch.float64), time_limit=0.0)
    assert r.verdict == "unknown" and r.bound <= 1e-7 + 1e-9 and r.domains >= 1


def test_bad_input_is_refused_clearly():
    net = mlp(0)
    x = torch.rand(2, 5, dtype=torch.float64)
    C = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(SpecError, match="one input at a time"):
        bab(net, Box(x - 0.1, x + 0.1), C)
    with pytest.raises(SpecError, match="box-shaped"):
        bab(net, L2Ball(x[:1], 0.1), C)
    with pytest.raises(SpecError, match="C must be"):
        bab(net, Box(x[:1] - 0.1, x[:1] + 0.1), C, torch.zeros(3))
    sig = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 1)).double()
    with pytest.raises(g.UnsupportedOpError, match="piecewise-linear networks only.*Sigmoid"):
        bab(sig, Box(x[:1] - 0.1, x[:1] + 0.1), C)


def test_a_clause_of_two_rows_is_proved_when_either_row_is():
    """max(f − hi, lo − f) > 0 everywhere iff the output never enters [lo, hi]."""
    net = mlp(0)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = Box(x - 0.3, x + 0.3)
    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    exact = milp_bounds(net, s, C[:1].unsqueeze(0), time_limit=60)[0][0].bound
    spread = float(net(s.sample(1000)[:, 0]).detach().max()) - exact
    gap = 0.1 * spread
    below = bab(net, s, C, torch.tensor([-(exact - gap), exact - 2 * gap], dtype=torch.float64), time_limit=300)
    assert below.verdict == "verified"  # the output stays above the interval
    around = bab(net, s, C, torch.tensor([-(exact + gap), exact - gap], dtype=torch.float64), time_limit=300)
    assert around.verdict == "falsified"  # the minimum lies inside the interval
    y = float(net(around.x).detach()[0, 0])
    assert exact - gap <= y <= exact + gap and s.contains(around.x).all()


def test_a_network_without_unstable_relus_is_decided_at_the_root():
    net = mlp(1)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = Box(x - 1e-6, x + 1e-6)  # every ReLU is stable on so small a box
    C = torch.ones(1, 1, dtype=torch.float64)
    f = float(net(x).detach()[0, 0])
    r = bab(net, s, C, torch.tensor([-(f - 0.01)], dtype=torch.float64))
    assert r.verdict == "verified" and r.domains == 1
    r = bab(net, s, C, torch.tensor([-(f + 0.01)], dtype=torch.float64))
    assert r.verdict == "falsified" and r.value <= 0


def test_a_resumed_search_reaches_the_verdict_of_one_long_run():
    """ReluBab.run in slices of one round each goes on from the open domains: the same verdict and bound as one
    uninterrupted run, and the domains bounded add up."""
    net = mlp(3)
    x = torch.rand(1, 5, dtype=torch.float64)
    s = Box(x - 0.3, x + 0.3)
    C = torch.ones(1, 1, dtype=torch.float64)
    exact = milp_bounds(net, s, C.unsqueeze(0), time_limit=60)[0][0].bound
    d = torch.tensor([-(exact - 0.005 * abs(exact) - 1e-4)], dtype=torch.float64)
    whole = bab(net, s, C, d, time_limit=300, batch=1)
    search = ReluBab(net, s, C, d, batch=1)
    slices = 0
    while not search.finished:
        r = search.run(0.0)  # one round per call
        slices += 1
    assert r.verdict == whole.verdict == "verified" and slices > 2
    assert r.domains == whole.domains and r.bound == pytest.approx(whole.bound)
    assert search.run(10.0) is r  # a finished search returns its result


def test_round_robin_finds_a_later_clause_counterexample_that_a_hard_first_clause_would_hide(monkeypatch):
    """The open clauses share the time: a first clause that never finishes cannot use up the budget before the
    second one's counterexample is found."""
    from certkit.specs import LinearSpec, Property
    from certkit.verify import cascade

    net = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    runs = []

    class Fake:
        def __init__(self, model, one, C, d, pre=None):
            self.row = int(C[0].argmax())
            self.finished = False

        def run(self, seconds):
            runs.append((self.row, seconds))
            if self.row == 1 and len([r for r in runs if r[0] == 1]) == 2:
                x = torch.tensor([[0.5, -0.5]], dtype=torch.float64)  # row 1: y_1 + 0 <= 0
                return type("R", (), {"verdict": "falsified", "x": x})()
            return type("R", (), {"verdict": "unknown", "bound": -1.0})()

    monkeypatch.setattr(cascade, "ReluBab", Fake)
    one = Box(torch.full((1, 2), -1.0, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    prop = Property(LinearSpec(torch.eye(2, dtype=torch.float64)[None], torch.zeros(1, 2, dtype=torch.float64)),
                    torch.tensor([0, 1]))
    v = cascade.Verdict("unknown", "", {})
    cascade._round_robin(net, one, prop, [0, 1], torch.full((2,), -1.0), v, {}, 30.0, lambda: net, one,
                         first_slice=0.01)
    assert v.verdict == "falsified" and v.stage == "bab"
    assert [r[0] for r in runs] == [0, 1, 0, 1]
    assert runs[2][1] == pytest.approx(0.02)  # slices double each round


def test_round_robin_gives_restart_pgd_a_share_of_each_round(monkeypatch):
    """After a round that leaves clauses open, random-restart PGD gets a tenth of its time and a checked
    counterexample ends the search; with ``search_share=0`` only branch and bound runs."""
    import time

    from certkit.specs import LinearSpec, Property
    from certkit.verify import cascade

    net = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    runs, given = [], []

    class Slow:  # a branch and bound that never decides, using the time it is given
        def __init__(self, model, one, C, d, pre=None):
            self.row, self.finished = int(C[0].argmax()), False

        def run(self, seconds):
            runs.append(self.row)
            time.sleep(seconds)
            return type("R", (), {"verdict": "unknown", "bound": -1.0})()

    real = cascade.pgd_search

    def spy(f, lo, hi, seconds, **kw):
        given.append(seconds)
        return real(f, lo, hi, seconds, **kw)

    monkeypatch.setattr(cascade, "ReluBab", Slow)
    monkeypatch.setattr(cascade, "pgd_search", spy)
    one = Box(torch.full((1, 2), -1.0, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    # clause q: x_q + 0.9 <= 0, a strip at the edge of [-1, 1]²
    prop = Property(LinearSpec(torch.eye(2, dtype=torch.float64)[None], torch.full((1, 2), 0.9, dtype=torch.float64)),
                    torch.tensor([0, 1]))
    v = cascade.Verdict("unknown", "", {})
    cascade._round_robin(net, one, prop, [0, 1], torch.full((2,), -1.0), v, {}, 5.0, lambda: net, one,
                         first_slice=0.2)
    assert v.verdict == "falsified" and runs == [0, 1]  # found right after the first round
    assert given[0] == pytest.approx(0.04, abs=0.02)  # a tenth of the round's 0.4 s
    x = v.counterexample.double()
    assert bool(one.contains(x)[0]) and float(net(x).detach().min()) + 0.9 <= 0
    runs.clear()
    given.clear()
    v = cascade.Verdict("unknown", "", {})
    cascade._round_robin(net, one, prop, [0, 1], torch.full((2,), -1.0), v, {}, 0.5, lambda: net, one,
                         first_slice=0.1, search_share=0.0)
    assert v.verdict == "unknown" and not given and len(runs) >= 4


def test_a_resumed_search_sizes_its_rounds_to_the_time_it_is_given():
    """After one round, a run's rounds shrink to what fits in its seconds (at least 8 parents): a short slice of
    a hard search ends close to its limit instead of one full round of 256 parents later."""
    import time

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                      nn.Linear(200, 2)).eval()
    x = torch.rand(1, 20)
    with torch.no_grad():
        margin = float(m(x)[0, 0] - m(x)[0, 1])
    # rounds of 1,024 parents: a full round (≈ 0.25 s here) is far above the 0.05 s slice, so that the two differ
    # by more than the timer's noise (with 256 parents a full round was 0.056 s and the test flaky)
    search = ReluBab(m, Box(x - 0.3, x + 0.3), torch.tensor([[1.0, -1.0]]), torch.tensor([0.5 - margin]),
                     batch=1024)
    first = search.run(1.0)
    assert first.verdict == "unknown" and search.per_domain is not None
    full_round = 2 * search.batch * search.per_domain
    t = time.perf_counter()
    assert search.run(0.05).verdict == "unknown"
    took = time.perf_counter() - t
    assert took < 0.05 + 16 * search.per_domain * 3 + 0.2 and took < full_round, (took, full_round)
