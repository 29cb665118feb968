"""Training objectives: ``objective(model, x, y, step) -> (loss, metrics)``.

* :class:`Standard` — cross-entropy.
* :class:`PGDTraining` — Madry et al. 2018: cross-entropy at a PGD adversarial point.
* :class:`IBPTraining` — Gowal et al. 2018: ``κ·CE(f(x), y) + (1−κ)·CE(ẑ, y)`` where ``ẑ`` are the
  worst-case logits from the IBP lower bounds on the margins over the ε-ball, with ε ramped up from 0 and κ
  ramped down from 1.

An L1 penalty on the weights (``l1``) can be added to any objective by the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certkit.attacks.pgd import pgd
from certkit.bounds.interval import interval_bounds
from certkit.specs import ball, margin_spec, worst_case_logits
from certkit.train.schedules import Ramp


class Objective:
    """Returns (loss, metrics); metric values are floats or detached 0-d tensors, so that a training step
    never waits for the device just to log."""

    name = "objective"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int):
        raise NotImplementedError


class Standard(Objective):
    name = "standard"

    def __call__(self, model, x, y, step):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}


class PGDTraining(Objective):
    name = "pgd"

    def __init__(self, eps: Ramp, norm: str = "inf", steps: int = 10, step_size: float | None = None,
                 restarts: int = 1):
        self.eps, self.norm, self.steps, self.step_size, self.restarts = eps, norm, steps, step_size, restarts

    def __call__(self, model, x, y, step):
        eps = self.eps(step)
        if eps > 0:
            x = pgd(model, x, y, eps, self.norm, self.steps, self.step_size, self.restarts).x_adv
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "adv_acc": (logits.argmax(1) == y).float().mean(), "eps": eps}


class IBPTraining(Objective):
    name = "ibp"

    def __init__(self, eps: Ramp, kappa: Ramp, num_classes: int = 10, norm: str = "inf"):
        self.eps, self.kappa, self.num_classes, self.norm = eps, kappa, num_classes, norm

    def __call__(self, model, x, y, step):
        eps, kappa = self.eps(step), self.kappa(step)
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        metrics = {"acc": (logits.argmax(1) == y).float().mean(), "eps": eps, "kappa": kappa}
        if eps <= 0 or kappa >= 1:
            metrics["loss"] = clean.detach()
            return clean, metrics
        spec = margin_spec(y, self.num_classes, x.dtype)
        lower = interval_bounds(model, ball(self.norm, x, eps), spec).lower
        robust = F.cross_entropy(worst_case_logits(lower, y, self.num_classes), y)
        loss = kappa * clean + (1 - kappa) * robust
        metrics.update(loss=loss.detach(), robust_loss=robust.detach(),
                       ibp_acc=(lower.detach().min(1).values > 0).float().mean())
        return loss, metrics
