"""Projected gradient descent (Madry et al. 2018) in L∞ and L2, with random starts and restarts.

The attack maximises a loss of the true label (cross-entropy or the CW margin) over the ball clipped to the
data domain; every step is projected back into the set. Across restarts, the first adversarial point found
for an input is kept. Any adversarial point returned is checked by a plain forward pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from certkit import rng
from certkit.specs import Box, ball, check_finite


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # the strongest point found per input (adversarial where ``success``)
    success: torch.Tensor  # bool (B,): x_adv is misclassified (checked by a forward pass)

    @property
    def robust_accuracy(self) -> float:
        """Fraction of inputs the attack did not break (inputs misclassified at the start count as broken)."""
        return 1.0 - self.success.float().mean().item()


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "margin":  # max_{j≠y} z_j − z_y (Carlini–Wagner)
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)
        return other - logits.gather(1, y[:, None]).squeeze(1)
    raise ValueError(f"unknown attack loss {kind!r}; use 'ce' or 'margin'")


def _normalise_grad(grad: torch.Tensor, p: float) -> torch.Tensor:
    if p == math.inf:
        return grad.sign()
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norm.view(-1, *([1] * (grad.dim() - 1)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str | float = "inf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    domain: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Attack ``model`` at ``(x, y)`` within the ``norm`` ball of radius ``eps``.

    ``step_size`` defaults to 2.5·eps/steps (Madry et al.). The model's mode is left unchanged; gradients
    of its parameters are not touched.
    """
    check_finite(x)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    s = ball(norm, x.detach(), eps, domain)
    step = s.eps * (2.5 / max(steps, 1)) if step_size is None else torch.as_tensor(step_size).to(x)
    with torch.no_grad():
        best = x.detach().clone()
        success = model(best).argmax(1) != y
    for r in range(restarts):
        todo = ~success
        if not todo.any():
            break
        sub = ball(norm, x[todo].detach(), s.eps.flatten()[todo], domain)
        st = step[todo] if step.dim() > 0 and step.numel() > 1 else step
        xa = sub.sample(1, generator)[0] if (random_start or r > 0) else sub.x.clone()
        yt = y[todo]
        for _ in range(steps):
            xa.requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(_loss(model(xa), yt, loss).sum(), xa)
            xa = sub.project(xa.detach() + st * _normalise_grad(grad, sub.p))
        with torch.no_grad():
            broke = model(xa).argmax(1) != yt
        idx = todo.nonzero().squeeze(1)
        best[idx[broke]] = xa[broke]
        success[idx[broke]] = True
    return AttackResult(best.detach(), success)


def pgd_minimize(
    objective,
    input_set,
    steps: int = 50,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    deadline: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise a per-input ``objective(x) -> (B,)`` over a box-shaped set by signed-gradient PGD with random
    starts (the first from ``start``, default the centre). Past ``deadline`` (a ``time.perf_counter()`` value)
    it stops after the current step. Returns the best points and their values, (B, ...) and (B,)."""
    lo, up = input_set.lower.detach(), input_set.upper.detach()
    step = (up - lo) / 2 * (2.5 / max(steps, 1)) if step_size is None else step_size
    best_x = (input_set.x if start is None else start).detach().clone()
    with torch.no_grad():
        best_v = objective(best_x)
    for r in range(restarts):
        xa = best_x.clone() if r == 0 else lo + rng.uniform(lo.shape, generator, lo.dtype, lo.device) * (up - lo)
        for _ in range(steps):
            if deadline is not None and time.perf_counter() > deadline:
                break
            xa.requires_grad_(True)
            with torch.enable_grad():
                v = objective(xa)
                grad, = torch.autograd.grad(v.sum(), xa)
            with torch.no_grad():
                better = v.detach() < best_v
                best_x[better], best_v[better] = xa.detach()[better], v.detach()[better]
                xa = torch.minimum(torch.maximum(xa.detach() - step * grad.sign(), lo), up)
        with torch.no_grad():
            v = objective(xa)
            better = v < best_v
            best_x[better], best_v[better] = xa[better], v[better]
        if deadline is not None and time.perf_counter() > deadline:
            break
    return best_x, best_v


def pgd_search(objective, lower: torch.Tensor, upper: torch.Tensor, seconds: float, copies: int = 32,
               steps: int = 50, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Random-restart PGD on one box [lower, upper] (1, ...) for about ``seconds``: rounds of ``copies``
    uniform starts, batched, each run for ``steps`` signed-gradient steps, until a point with
    ``objective <= 0`` is found or the time is spent. On COLT's MNIST net at ε = 0.1 many more restarts, not
    longer runs or per-target losses, were what found the counterexamples that 3 restarts miss. Returns the
    best point (1, ...) and its value."""
    end = time.perf_counter() + seconds
    lo, up = lower.expand(copies, *lower.shape[1:]), upper.expand(copies, *upper.shape[1:])
    box = Box(lo, up)
    best_x, best_v = lower.clone(), math.inf
    while time.perf_counter() < end:
        start = lo + rng.uniform(lo.shape, generator, lo.dtype, lo.device) * (up - lo)
        xs, vs = pgd_minimize(objective, box, steps, 1, start=start, deadline=end)
        k = int(vs.argmin())
        if float(vs[k]) < best_v:
            best_x, best_v = xs[k:k + 1].detach(), float(vs[k])
        if best_v <= 0:
            break
    return best_x, best_v
