"""Branch and bound over activation intervals, for networks with Sigmoid or Tanh (and ReLU) on high-dimensional
inputs, where neither input splitting (:mod:`certkit.verify.input_bab`) nor ReLU splitting with its exact MILP
fallback (:mod:`certkit.verify.bab`) applies.

A *domain* is the input box together with a sub-interval ``[l', u']`` of some neurons' pre-activation ranges:
the points of the box whose pre-activation lies in it. Splitting a neuron's interval at a point m gives two
children, ``z ≤ m`` and ``z ≥ m``, that together cover the parent. Each domain is bounded by CROWN's backward
pass with the split neurons' intervals clipped: the relaxation of a clipped neuron holds on the domain, so the
linear bound holds there; minimised over the whole box it is smaller still, hence sound. A child inherits its
parent's bound (its set is smaller). S-shaped neurons are split at 0 (the inflection point) while their
interval holds it, else at its midpoint; a ReLU at 0 (which makes it exact). The neuron to split is the one with
the largest relaxation gap times the weight of its output in the bound (BaBSR-like for S-shapes: the band
``bu − bl`` of :func:`~certkit.bounds.relax.sshape_relaxation`). Intervals only shrink, so the search never
decides by exactness: it proves (every domain's bound positive), finds a counterexample (PGD from the minimisers
of the domains' linear bounds, checked in float64), or stops at the time or domain budget with a sound bound.
"""

from __future__ import annotations

import math
import time

import torch

from certkit import graph as g
from certkit.attacks.pgd import pgd_minimize
from certkit.bounds.interval import Bounds
from certkit.bounds.linear import _backward, crown_bounds
from certkit.bounds.relax import relu_relaxation, sshape_relaxation
from certkit.specs import Box, InputSet, LinearSpec, SpecError
from certkit.verify.bab import BabResult, clause_rows, violation_check

MIN_WIDTH = 1e-6  # an interval narrower than this (relative to 1 + |bound|) is not split further


def activation_bab(model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor | None = None,
                   time_limit: float = 60.0, batch: int = 128, max_domains: int = 200_000,
                   pre: dict[int, Bounds] | None = None, attack_points: int = 8, attack_steps: int = 20) -> BabResult:
    """Decide ``min_{x in box} max_k (C·f(x) + d)_k > 0`` (one clause; C: (K, n_out), d: (K,)) by splitting
    activation intervals; ``batch`` domains are split per round (2·batch bounded in one backward pass); ``pre``:
    the root's intermediate bounds (CROWN's by default). Stops at ``time_limit`` seconds or ``max_domains`` open
    domains with 'unknown' and a sound lower bound."""
    t0 = time.perf_counter()
    if not input_set.is_box or input_set.batch_size != 1:
        raise SpecError("activation splitting takes one box-shaped input set")
    graph = g.to_graph(model)
    lo0, hi0 = input_set.lower, input_set.upper
    dtype, dev = lo0.dtype, lo0.device
    C, d = clause_rows(C, d, lo0)
    K = C.shape[0]
    if pre is None:
        with torch.no_grad():
            _, pre = crown_bounds(graph, Box(lo0, hi0), LinearSpec(C[None], None), return_all=True)
    with torch.no_grad():
        shapes = [tuple(v.shape[1:]) for v in graph.forward(input_set.x.to(dtype), return_all=True)]
    acts = {n.inputs[0]: n.op for n in graph.nodes if isinstance(n.op, g.Activation)}
    js = [j for j in sorted(acts) if j in pre]
    sizes = [math.prod(shapes[j]) for j in js]

    def clause(m, x: torch.Tensor) -> torch.Tensor:
        out = m(x).flatten(1)
        return (out @ C.T.to(out.dtype) + d.to(out.dtype)).max(1).values

    violates = violation_check(model, clause, lo0, hi0)

    def bound(L: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lower bounds (D,) of the domains with the concatenated activation intervals L, U (D, N); the
        branching scores (D, N) and a candidate counterexample per domain and row (D·K, ...)."""
        D = len(L)
        dom_pre = dict(pre)
        dom_pre.update({j: Bounds(t.view(D, *shapes[j]), s.view(D, *shapes[j]))
                        for j, t, s in zip(js, L.split(sizes, 1), U.split(sizes, 1))})
        for j in pre:  # other nodes (e.g. a MaxPool's input) keep the root's bounds
            if j not in acts:
                dom_pre[j] = Bounds(pre[j].lower.expand(D, *shapes[j]), pre[j].upper.expand(D, *shapes[j]))
        box = Box(lo0.expand(D, *lo0.shape[1:]), hi0.expand(D, *hi0.shape[1:]))
        record: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            low = _backward(graph, graph.output, C.expand(D, -1, -1), shapes, dom_pre, box, d.expand(D, -1),
                            record=record)
            scores = []
            for j in js:
                b = Bounds(dom_pre[j].lower.flatten(1), dom_pre[j].upper.flatten(1))
                op = acts[j]
                if isinstance(op, g.PiecewiseLinear):
                    gap = relu_relaxation(b, op.negative_slope)[2]
                else:
                    _, bl, _, bu = sshape_relaxation(isinstance(op, g.Tanh), b)
                    gap = bu - bl
                weight = record[j].flatten(2).abs().sum(1)
                wide = (b.upper - b.lower) > MIN_WIDTH * (1 + torch.maximum(b.lower.abs(), b.upper.abs()))
                scores.append(torch.where(wide & (gap > 0), weight * gap, torch.full_like(gap, -1.0)))
            A = record[-1]
            xs = torch.where(A >= 0, lo0.unsqueeze(1), hi0.unsqueeze(1)).reshape(D * K, *lo0.shape[1:])
        return low.max(1).values, torch.cat(scores, 1), xs

    def result(verdict: str, bound_: float, value: float = math.inf, x: torch.Tensor | None = None) -> BabResult:
        return BabResult(verdict, bound_, value, x, n_bounded, time.perf_counter() - t0)

    def attack(xs: torch.Tensor) -> torch.Tensor | None:
        with torch.no_grad():
            v = clause(model, xs)
        top = v.argsort()[:attack_points]
        box = Box(lo0.expand(len(top), *lo0.shape[1:]), hi0.expand(len(top), *hi0.shape[1:]))
        xa, va = pgd_minimize(lambda x: clause(model, x), box, attack_steps, 1, start=xs[top])
        xs, v = torch.cat([xs, xa]), torch.cat([v, va])
        for k in v.argsort()[: int((v <= 0).sum())].tolist():
            if violates(xs[k:k + 1]):
                return xs[k:k + 1].detach()
        return None

    L = torch.cat([pre[j].lower.flatten(1) for j in js], 1) if js else torch.zeros(1, 0, dtype=dtype, device=dev)
    U = torch.cat([pre[j].upper.flatten(1) for j in js], 1) if js else torch.zeros(1, 0, dtype=dtype, device=dev)
    P, S, xs = bound(L, U)
    n_bounded = 1
    x = attack(xs)
    if x is not None:
        return result("falsified", -math.inf, float(clause(model, x)[0].detach()), x)
    worst_done = float(P[0]) if P[0] > 0 else math.inf
    keep = P <= 0
    L, U, P, S = L[keep], U[keep], P[keep], S[keep]
    kinds = torch.cat([torch.full((n,), isinstance(acts[j], g.PiecewiseLinear), dtype=torch.bool, device=dev)
                       for j, n in zip(js, sizes)]) if js else torch.zeros(0, dtype=torch.bool, device=dev)
    last_round = 0.0
    while len(P):
        now = time.perf_counter()
        if now - t0 + last_round > time_limit or len(P) > max_domains:
            return result("unknown", min(worst_done, float(P.min())))
        order = P.argsort()
        take, rest = order[:batch], order[batch:]
        lb, ub, pb, sb = L[take], U[take], P[take], S[take]
        L, U, P, S = L[rest], U[rest], P[rest], S[rest]
        best, neuron = sb.max(1)
        if (best <= 0).any():  # a domain with nothing left to split stays undecided
            return result("unknown", min(worst_done, float(pb.min()), float(P.min()) if len(P) else math.inf))
        D = len(lb)
        rows = torch.arange(D, device=dev)
        l_n, u_n = lb[rows, neuron], ub[rows, neuron]
        mid = torch.where(kinds[neuron] | ((l_n < 0) & (u_n > 0)), torch.zeros_like(l_n), (l_n + u_n) / 2)
        mid = torch.where((mid > l_n) & (mid < u_n), mid, (l_n + u_n) / 2)
        left_u, right_l = ub.clone(), lb.clone()
        left_u[rows, neuron] = mid
        right_l[rows, neuron] = mid
        cl, cu = torch.cat([lb, right_l]), torch.cat([left_u, ub])
        low, sc, xs = bound(cl, cu)
        low = torch.maximum(low, pb.repeat(2))  # a child's set lies in its parent's
        n_bounded += len(low)
        x = attack(xs)
        if x is not None:
            return result("falsified", -math.inf, float(clause(model, x)[0].detach()), x)
        done = low > 0
        if done.any():
            worst_done = min(worst_done, float(low[done].min()))
        L, U = torch.cat([L, cl[~done]]), torch.cat([U, cu[~done]])
        P, S = torch.cat([P, low[~done]]), torch.cat([S, sc[~done]])
        last_round = time.perf_counter() - now
    return result("verified", worst_done)
