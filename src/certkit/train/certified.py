"""Certified training beyond plain IBP, on the one training loop:

* IBP done well (Shi et al. 2021): :mod:`certkit.train.fast_ibp`, used by IBP, CROWN-IBP and SABR training.

* :class:`CrownIbpTraining` — CROWN-IBP (Zhang et al. 2020, eq. 9): the robust cross-entropy on the margins'
  lower bound ``β·CROWN-IBP + (1 − β)·IBP``, β ramped from ``beta_start`` to ``beta_end`` with ε (IBP intermediate
  bounds, one CROWN backward pass from the margins).
* :class:`SabrTraining` — SABR (Müller et al. 2023): IBP on a small box of radius λ·ε around a PGD point of the
  ball of radius (1 − λ)·ε, so the box lies in the ε-ball: a less over-approximated, deliberately not sound
  training loss (certification stays sound and is done by certkit's verifiers).
* :class:`MtlIbpTraining` — MTL-IBP and its variants (De Palma et al. 2024, eqs. 4–6): the adversarial loss at a
  PGD point and the IBP loss combined with weight α: ``mtl`` α·L_IBP + (1 − α)·L_adv, ``exp``
  L_IBP^α·L_adv^(1−α) per input, ``cc`` the cross-entropy of the margins α·IBP lower + (1 − α)·margin at the
  attack point.

Each robust loss upper-bounds (IBP, CROWN-IBP: the worst case over the ε-ball; SABR: over its small box) or lies
between (MTL-IBP family: the adversarial and IBP losses) the losses it claims; ``tests/test_certified_training.py``
checks this on sampled points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certkit.attacks.pgd import pgd
from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.specs import ball, margin_spec, worst_case_logits
from certkit.train.objectives import IBPTraining, Objective, eval_mode
from certkit.train.schedules import Ramp


class CrownIbpTraining(IBPTraining):
    name = "crown-ibp"
    metric = "crown_ibp_acc"

    def __init__(self, eps: Ramp, kappa: Ramp, beta: Ramp, num_classes: int = 10, norm: str = "inf", **fast):
        super().__init__(eps, kappa, num_classes, norm, **fast)
        self.beta = beta

    def robust_lower(self, model, x, y, eps, step):
        s, spec = ball(self.norm, x, eps), margin_spec(y, self.num_classes, x.dtype)
        beta = self.beta(step)
        ibp = interval_bounds(model, s, spec).lower
        if beta <= 0:
            return ibp
        crown = crown_bounds(model, s, spec, intermediate="ibp").lower
        return beta * crown + (1 - beta) * ibp


class SabrTraining(IBPTraining):
    name = "sabr"
    metric = "small_box_acc"

    def __init__(self, eps: Ramp, kappa: Ramp, lam: float = 0.4, num_classes: int = 10, norm: str = "inf",
                 steps: int = 8, **fast):
        if not 0 < lam <= 1:
            raise ValueError(f"SABR's λ must be in (0, 1], got {lam}")
        super().__init__(eps, kappa, num_classes, norm, **fast)
        self.lam, self.steps = lam, steps

    def centre(self, model, x, y, eps: float) -> torch.Tensor:
        """The small box's centre: a PGD point of the ball of radius (1 − λ)·ε (x itself when λ = 1)."""
        outer = (1 - self.lam) * eps
        if outer <= 0:
            return x
        with eval_mode(model):
            return pgd(model, x, y, outer, self.norm, self.steps).x_adv.detach()

    def robust_lower(self, model, x, y, eps, step):
        spec = margin_spec(y, self.num_classes, x.dtype)
        return interval_bounds(model, ball(self.norm, self.centre(model, x, y, eps), self.lam * eps), spec).lower


class MtlIbpTraining(Objective):
    name = "mtl-ibp"
    COMBINATIONS = ("mtl", "exp", "cc")

    def __init__(self, eps: Ramp, alpha: float = 0.5, combination: str = "mtl", num_classes: int = 10,
                 norm: str = "inf", steps: int = 8):
        if combination not in self.COMBINATIONS:
            raise ValueError(f"unknown combination {combination!r}; use one of {', '.join(self.COMBINATIONS)}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"α must be in [0, 1], got {alpha}")
        self.eps, self.alpha, self.combination = eps, alpha, combination
        self.num_classes, self.norm, self.steps = num_classes, norm, steps

    def __call__(self, model, x, y, step):
        eps = self.eps(step)
        if eps <= 0:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(1) == y).float().mean()  # at ε = 0 the attack and the bound are the point itself
            return loss, {"loss": loss.detach(), "eps": eps, "adv_acc": acc, "ibp_acc": acc}
        with eval_mode(model):
            x_adv = pgd(model, x, y, eps, self.norm, self.steps).x_adv.detach()
        adv = model(x_adv)
        spec = margin_spec(y, self.num_classes, x.dtype)
        lower = interval_bounds(model, ball(self.norm, x, eps), spec).lower
        a = self.alpha
        if self.combination == "cc":
            loss = F.cross_entropy(worst_case_logits(a * lower + (1 - a) * spec.apply(adv), y, self.num_classes), y)
        else:
            l_ibp = F.cross_entropy(worst_case_logits(lower, y, self.num_classes), y, reduction="none")
            l_adv = F.cross_entropy(adv, y, reduction="none")
            per = a * l_ibp + (1 - a) * l_adv if self.combination == "mtl" else \
                l_ibp.clamp_min(1e-12) ** a * l_adv.clamp_min(1e-12) ** (1 - a)
            loss = per.mean()
        return loss, {"loss": loss.detach(), "eps": eps, "adv_acc": (adv.argmax(1) == y).float().mean(),
                      "ibp_acc": (lower.detach().min(1).values > 0).float().mean()}
