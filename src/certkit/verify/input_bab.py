"""Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

ReLU splitting (:mod:`certkit.verify.bab`) pays when the input is high-dimensional and few neurons are
unstable; on a low-dimensional input box that is wide, most neurons are unstable and halving the box is the
better split: every child's bounds tighten everywhere at once.

It starts with uniform samples of the box and a PGD with small, shrinking steps from the best of them
(counterexamples often lie in thin slivers where two outputs tie). Every open box carries its CROWN lower
bound of the clause and the clause's value at its centre. Each round
runs a short PGD in the ``attack_points`` open boxes whose centres come closest to a violation (each box once;
counterexamples are checked in float64), then takes the ``batch`` open boxes with the lowest bounds (best
first) and halves each of them. Where to halve is chosen by the bounds themselves (``branching='bound'``):
every varying input is tried, both halves of every candidate are bounded in one batched CROWN call, and the
input whose halves leave the least violation, ``min(l_left, 0) + min(l_right, 0)``, wins (ties go to the
first-order estimate below); its halves, already bounded, become open boxes (or are dropped when proved).
``branching='gradient'`` instead halves the input with the largest ``|∂ clause/∂x_i| · width_i`` at the
centre, which costs one bound per child instead of one per candidate (used when many inputs vary). Any
function of the input is allowed, not only piecewise-linear ones: the bound is CROWN's, which handles
Sigmoid, Tanh and MaxPool too.
"""

from __future__ import annotations

import math
import time

import torch

from certkit.attacks.pgd import pgd_minimize
from certkit.bounds.linear import crown_bounds
from certkit.specs import Box, InputSet, LinearSpec, SpecError
from certkit.verify.bab import BabResult, clause_rows, violation_check

MAX_INPUTS = 16  # the cascade splits the input box, not ReLUs, when at most this many inputs vary
BOUND_BRANCHING_INPUTS = 8  # 'auto' branching tries every input when at most this many vary


def splits_inputs(input_set: InputSet) -> bool:
    """Input splitting suits this set: a box in which at most :data:`MAX_INPUTS` coordinates vary."""
    return input_set.is_box and int((input_set.upper > input_set.lower).sum()) <= MAX_INPUTS * input_set.batch_size


def input_bab(model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor | None = None, time_limit: float = 60.0,
              batch: int = 256, max_domains: int = 500_000, attack_points: int = 8, attack_steps: int = 10,
              branching: str = "auto", chunk: int = 4096, samples: int = 100_000) -> BabResult:
    """Decide ``min_{x in box} max_k (C·f(x) + d)_k > 0`` (C: (K, n_out), d: (K,)) by splitting the input box.
    First ``samples`` uniform points and a fine PGD from the best of them look for a counterexample; then
    ``batch`` boxes are split per round (``chunk`` boxes at most per CROWN call); ``branching`` is 'bound',
    'gradient' or 'auto' (bound when at most :data:`BOUND_BRANCHING_INPUTS` inputs vary). Stops at
    ``time_limit`` seconds or ``max_domains`` open boxes with 'unknown' and a sound lower bound (the smallest
    over the open boxes and the proved ones)."""
    t0 = time.perf_counter()
    if not input_set.is_box or input_set.batch_size != 1:
        raise SpecError("input splitting takes one box-shaped input set")
    if branching not in ("auto", "bound", "gradient"):
        raise SpecError(f"branching must be 'auto', 'bound' or 'gradient', got {branching!r}")
    lo0, hi0 = input_set.lower, input_set.upper
    dtype, dev = lo0.dtype, lo0.device
    C, d = clause_rows(C, d, lo0)
    varying = torch.nonzero((hi0 > lo0).flatten()).flatten()
    if branching == "auto":
        branching = "bound" if len(varying) <= BOUND_BRANCHING_INPUTS else "gradient"

    def clause(m, x: torch.Tensor) -> torch.Tensor:
        out = m(x).flatten(1)
        return (out @ C.T.to(out.dtype) + d.to(out.dtype)).max(1).values

    def bound(lb: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
        """CROWN's lower bound of the clause on each box (a clause is proved when one of its rows is)."""
        out = []
        with torch.no_grad():
            for s in range(0, len(lb), chunk):
                b = Box(lb[s:s + chunk], hb[s:s + chunk])
                spec = LinearSpec(C.expand(len(b.lower), -1, -1), None)
                out.append((crown_bounds(model, b, spec).lower + d).max(1).values)
        return torch.cat(out)

    violates = violation_check(model, clause, lo0, hi0)

    def result(verdict: str, bound_: float, value: float = math.inf, x: torch.Tensor | None = None) -> BabResult:
        return BabResult(verdict, bound_, value, x, n_bounded, time.perf_counter() - t0)

    gen = torch.Generator(device=dev).manual_seed(0)

    def sample_attack(n: int, starts: int, steps: int, scales: tuple[float, ...]) -> torch.Tensor | None:
        """Counterexamples often sit in thin slivers near ties of two outputs: ``n`` uniform samples of the box,
        then PGD with small, shrinking steps from the best ``starts`` of them. A violating point, or None."""
        with torch.no_grad():
            xs = lo0 + torch.rand(n, *lo0.shape[1:], generator=gen, dtype=dtype, device=dev) * (hi0 - lo0)
            v = torch.cat([clause(model, xs[s:s + 20_000]) for s in range(0, n, 20_000)])
        xs = xs[v.argsort()[:starts]]
        box = Box(lo0.expand(len(xs), *lo0.shape[1:]), hi0.expand(len(xs), *lo0.shape[1:]))
        for scale in scales:
            xs, v = pgd_minimize(lambda x: clause(model, x), box, steps, 1, step_size=(hi0 - lo0) * scale, start=xs)
            for k in v.argsort()[: int((v <= 0).sum())].tolist():
                if violates(xs[k:k + 1]):
                    return xs[k:k + 1].detach()
        return None

    n_bounded = 0
    x = sample_attack(samples, attack_points * 8, 50, (1e-2, 1e-3, 1e-4))
    deep_attack_at = t0 + time_limit / 4  # a larger search, once, when the bounds have not decided by then
    if x is not None:
        return result("falsified", -math.inf, float(clause(model, x)[0].detach()), x)
    n_bounded = 1
    P = bound(lo0, hi0)  # each open box's lower bound
    L, H = lo0[P <= 0], hi0[P <= 0]  # open boxes, (D, *shape)
    worst_done = float(P[0]) if P[0] > 0 else math.inf
    P = P[P <= 0]
    with torch.no_grad():
        V = clause(model, (L + H) / 2)  # each open box's value at its centre, +inf once it has been attacked
    last_round = 0.0
    while len(L):
        now = time.perf_counter()
        if now - t0 + last_round > time_limit or len(L) > max_domains:  # stop before a round that would overrun
            return result("unknown", min(worst_done, float(P.min())))
        if now > deep_attack_at:
            deep_attack_at = math.inf
            x = sample_attack(samples * 10, attack_points * 64, 100, (1e-2, 1e-3, 1e-4, 1e-5))
            if x is not None:
                return result("falsified", -math.inf, float(clause(model, x)[0].detach()), x)
        # a short PGD in the open boxes whose centres come closest to a violation, each box once
        top = V.topk(min(attack_points, len(V)), largest=False).indices
        top = top[torch.isfinite(V[top])]
        if len(top):
            xa, va = pgd_minimize(lambda x: clause(model, x), Box(L[top], H[top]), attack_steps, 1,
                                  start=((L[top] + H[top]) / 2))
            V[top] = math.inf
            for k in va.argsort()[: int((va <= 0).sum())].tolist():
                if violates(xa[k:k + 1]):
                    return result("falsified", -math.inf, float(va[k]), xa[k:k + 1].detach())
        if len(L) > batch:  # best first: the boxes with the lowest bounds
            take = torch.zeros(len(L), dtype=torch.bool, device=dev)
            take[P.topk(batch, largest=False).indices] = True
        else:
            take = torch.ones(len(L), dtype=torch.bool, device=dev)
        lb, hb, pb, L, H, P, V = L[take], H[take], P[take], L[~take], H[~take], P[~take], V[~take]
        D = len(lb)
        centre = ((lb + hb) / 2).requires_grad_(True)
        with torch.enable_grad():
            v = clause(model, centre)
            (grad,) = torch.autograd.grad(v.sum(), centre)
        v, xs = v.detach(), centre.detach()
        for k in v.argsort()[: int((v <= 0).sum())].tolist():
            if violates(xs[k:k + 1]):
                return result("falsified", -math.inf, float(v[k]), xs[k:k + 1].detach())
        if len(varying) == 0:  # a single point that neither the bound nor the point itself decides
            return result("unknown", min(worst_done, float(pb.min()), float(P.min()) if len(P) else math.inf))
        flat_lo, flat_hi = lb.flatten(1), hb.flatten(1)
        width = flat_hi - flat_lo
        first_order = grad.flatten(1).abs() * width + 1e-9 * width  # ties (zero gradients) go to the widest input
        if branching == "bound":
            dims = varying.expand(D, -1)  # (D, n): every varying input is a candidate
        else:
            dims = first_order.argmax(1, keepdim=True)  # (D, 1)
        n = dims.shape[1]
        rows = torch.arange(D, device=dev).repeat_interleave(n)
        at = torch.arange(len(rows), device=dev)
        dim = dims.reshape(-1)
        lo_c, hi_c = flat_lo[rows], flat_hi[rows]  # (D·n, N): a copy per candidate
        mid = (lo_c[at, dim] + hi_c[at, dim]) / 2
        left_hi, right_lo = hi_c.clone(), lo_c.clone()
        left_hi[at, dim] = mid
        right_lo[at, dim] = mid
        c_lo = torch.cat([lo_c, right_lo]).view(-1, *lb.shape[1:])
        c_hi = torch.cat([left_hi, hi_c]).view(-1, *lb.shape[1:])
        # a child's set lies in its parent's, so the parent's bound holds for it too
        low = torch.maximum(bound(c_lo, c_hi), pb[rows].repeat(2))
        n_bounded += len(low)
        # the split that leaves the least violation; among equally good ones (often all are, when no half's
        # bound improves on its parent's yet) the first-order estimate decides
        score = (low[: D * n].clamp(max=0) + low[D * n:].clamp(max=0)).view(D, n)
        top = score.max(1, keepdim=True).values
        tied = score >= top - 1e-6 * (1 + top.abs())
        best = torch.where(tied, first_order.gather(1, dims), torch.full_like(score, -math.inf)).argmax(1)
        pick = torch.arange(D, device=dev) * n + best
        pick = torch.cat([pick, pick + D * n])
        c_lo, c_hi, low = c_lo[pick], c_hi[pick], low[pick]
        done = low > 0
        if done.any():
            worst_done = min(worst_done, float(low[done].min()))
        with torch.no_grad():
            v_c = clause(model, (c_lo[~done] + c_hi[~done]) / 2)
        L, H, P = torch.cat([L, c_lo[~done]]), torch.cat([H, c_hi[~done]]), torch.cat([P, low[~done]])
        V = torch.cat([V, v_c])
        last_round = time.perf_counter() - now
    return result("verified", worst_done)
