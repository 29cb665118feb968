"""Branch and bound on the input box, for networks with few inputs (ACAS Xu has 5).

ReLU splitting (:mod:`certkit.verify.bab`) pays when the input is high-dimensional and few neurons are
unstable; on a low-dimensional input box that is wide, most neurons are unstable and halving the box is the
better split: every child's bounds tighten everywhere at once. Each round bounds a batch of boxes with CROWN
(one batched call), drops the proved ones, tries each box's centre and, on the most promising boxes, a short
PGD as counterexamples (checked in float64), and halves every remaining box along the input whose
``|∂ clause/∂x_i| · width_i`` at the centre is largest (a first-order estimate of how much of the box's spread
that input causes). Any function of the input is allowed, not only piecewise-linear ones: the bound is
CROWN's, which handles Sigmoid, Tanh and MaxPool too.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from certkit.attacks.pgd import pgd_minimize
from certkit.bounds.linear import crown_bounds
from certkit.specs import Box, InputSet, LinearSpec, SpecError
from certkit.verify.bab import BabResult

MAX_INPUTS = 16  # the cascade splits the input box, not ReLUs, when at most this many inputs vary


def splits_inputs(input_set: InputSet) -> bool:
    """Input splitting suits this set: a box in which at most :data:`MAX_INPUTS` coordinates vary."""
    return input_set.is_box and int((input_set.upper > input_set.lower).sum()) <= MAX_INPUTS * input_set.batch_size


def input_bab(model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor | None = None, time_limit: float = 60.0,
              batch: int = 512, max_domains: int = 200_000, attack_points: int = 8,
              attack_steps: int = 10) -> BabResult:
    """Decide ``min_{x in box} max_k (C·f(x) + d)_k > 0`` (C: (K, n_out), d: (K,)) by splitting the input box.
    ``batch`` boxes are bounded per round; stops at ``time_limit`` seconds or ``max_domains`` open boxes with
    'unknown' and a sound lower bound (the smallest over the open boxes and the proved ones)."""
    t0 = time.perf_counter()
    if not input_set.is_box or input_set.batch_size != 1:
        raise SpecError("input splitting takes one box-shaped input set")
    lo0, hi0 = input_set.lower, input_set.upper
    dtype, dev = lo0.dtype, lo0.device
    C = torch.as_tensor(C, dtype=dtype, device=dev)
    d = torch.zeros(C.shape[0], dtype=dtype, device=dev) if d is None else torch.as_tensor(d, dtype=dtype,
                                                                                            device=dev).reshape(-1)
    if C.dim() != 2 or d.shape != (C.shape[0],):
        raise SpecError(f"C must be (K, n_out) and d (K,), got {tuple(C.shape)} and {tuple(d.shape)}")
    model64 = None

    def clause(m, x: torch.Tensor) -> torch.Tensor:
        out = m(x).flatten(1)
        return (out @ C.T.to(out.dtype) + d.to(out.dtype)).max(1).values

    def violates(x: torch.Tensor) -> bool:
        nonlocal model64
        if model64 is None:
            model64 = copy.deepcopy(model).double()
        inside = bool(((x >= lo0) & (x <= hi0)).all())
        with torch.no_grad():
            return inside and float(clause(model64, x.double())[0]) <= 0

    L, H = lo0.clone(), hi0.clone()  # open boxes, (D, *shape)
    P = torch.full((1,), -math.inf, dtype=dtype, device=dev)  # each open box's parent's bound (also its own)
    worst_done, n_bounded = math.inf, 0
    while True:
        if time.perf_counter() - t0 > time_limit or len(L) > max_domains:
            bound = min(worst_done, float(P.min())) if len(P) else worst_done
            return BabResult("unknown", bound, math.inf, None, n_bounded, time.perf_counter() - t0)
        lb, hb, pb, L, H, P = L[:batch], H[:batch], P[:batch], L[batch:], H[batch:], P[batch:]
        D = len(lb)
        with torch.no_grad():
            low = crown_bounds(model, Box(lb, hb), LinearSpec(C.expand(D, -1, -1), None)).lower + d
        low = torch.maximum(low.max(1).values, pb)  # proved when one of its rows is; a child's set is in its parent's
        n_bounded += D
        open_ = ~(low > 0)
        if (~open_).any():
            worst_done = min(worst_done, float(low[~open_].min()))
        lb, hb, low = lb[open_], hb[open_], low[open_]
        if len(lb) == 0:
            if len(L) == 0:
                return BabResult("verified", worst_done, math.inf, None, n_bounded, time.perf_counter() - t0)
            continue
        centre = ((lb + hb) / 2).requires_grad_(True)
        with torch.enable_grad():
            v = clause(model, centre)
            (grad,) = torch.autograd.grad(v.sum(), centre)
        v = v.detach()
        xs = centre.detach()
        if not (v <= 0).any():  # a short PGD from the most promising boxes
            top = v.argsort()[:attack_points]
            xs, v = pgd_minimize(lambda x: clause(model, x), Box(lb[top], hb[top]), attack_steps, 1, start=xs[top])
        for k in v.argsort()[: int((v <= 0).sum())].tolist():
            if violates(xs[k:k + 1]):
                return BabResult("falsified", -math.inf, float(v[k]), xs[k:k + 1].detach(), n_bounded,
                                 time.perf_counter() - t0)
        width = (hb - lb).flatten(1)
        score = grad.flatten(1).abs() * width + 1e-9 * width  # ties (zero gradients) go to the widest input
        dim = score.argmax(1)
        rows = torch.arange(len(lb), device=dev)
        mid = ((lb.flatten(1)[rows, dim] + hb.flatten(1)[rows, dim]) / 2)
        left_hi, right_lo = hb.flatten(1).clone(), lb.flatten(1).clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        L = torch.cat([L, lb, right_lo.view_as(lb)])
        H = torch.cat([H, left_hi.view_as(hb), hb])
        P = torch.cat([P, low, low])
