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


def fused_ce_upper(model, input_set, y: torch.Tensor, margin_ibp, num_classes: int) -> torch.Tensor:
    """An upper bound (B,) of the worst-case cross-entropy over ``input_set`` from ONE CROWN-IBP backward pass:
    loss fusion (Xu et al. 2020, §3.2) instead of one pass per margin.

    With ``m_j = f_j − f_y`` (j ≠ y), CE = log(1 + Σ_j exp(m_j)). On IBP's interval [l_j, u_j] of m_j (from
    ``margin_ibp``, the IBP bounds of the margins f_y − f_j) the convex exp lies below its chord
    a_j·m_j + b_j, so Σ_j exp(m_j) ≤ Σ_j b_j + max_x Σ_j a_j·m_j(x), and the last term is one linear row
    w·f(x), w = Σ_j a_j (e_j − e_y), bounded by CROWN (and by Σ_j a_j·u_j, as a_j ≥ 0); log is increasing, so the
    log of that bound bounds the worst CE. Everything is shifted by c = max(0, max_j u_j) against overflow."""
    from certkit.specs import LinearSpec

    lo_m, up_m = -margin_ibp.upper, -margin_ibp.lower  # bounds of m_j = f_j − f_y
    c = up_m.max(1).values.clamp(min=0).unsqueeze(1)
    e_lo, e_up = torch.exp(lo_m - c), torch.exp(up_m - c)
    width = up_m - lo_m
    thin = width < 1e-6  # a point: the constant e^(u − c) bounds exp from above
    a = torch.where(thin, torch.zeros_like(width), (e_up - e_lo) / torch.where(thin, torch.ones_like(width), width))
    b = torch.where(thin, e_up, e_lo - a * lo_m)
    # w = Σ_j a_j (e_j − e_y): minus the spec rows e_y − e_j, weighted
    rows = margin_spec(y, num_classes, a.dtype).C  # (B, K − 1, n): e_y − e_j
    w = -(a.unsqueeze(2) * rows).sum(1, keepdim=True)  # (B, 1, n)
    crown_up = -crown_bounds(model, input_set, LinearSpec(-w, validate=False), intermediate="ibp",
                             bound_upper=False).lower[:, 0]
    linear_up = torch.minimum(crown_up, (a * up_m).sum(1))
    total = (torch.exp(-c[:, 0]) + b.sum(1) + linear_up).clamp(min=torch.exp(-c[:, 0]))  # S ≥ e^(−c) always
    return c[:, 0] + torch.log(total)


class CrownIbpTraining(IBPTraining):
    """CROWN-IBP. With ``loss_fusion`` the CROWN-IBP part of the loss is :func:`fused_ce_upper` (one backward
    pass, not one per margin; the loss is mixed with IBP's: β·fused + (1 − β)·IBP CE, both upper bounds of the
    worst-case CE), else the margins' bounds are mixed (Zhang et al.'s eq. 9)."""

    name = "crown-ibp"
    metric = "crown_ibp_acc"

    def __init__(self, eps: Ramp, kappa: Ramp, beta: Ramp, num_classes: int = 10, norm: str = "inf",
                 loss_fusion: bool = False, **fast):
        super().__init__(eps, kappa, num_classes, norm, **fast)
        self.beta, self.loss_fusion = beta, loss_fusion
        if loss_fusion:
            self.metric = "ibp_acc"  # no margins are bounded by CROWN: the batch's IBP-certified share

    def robust_lower(self, model, x, y, eps, step):
        s, spec = ball(self.norm, x, eps), margin_spec(y, self.num_classes, x.dtype)
        beta = self.beta(step)
        ibp = interval_bounds(model, s, spec).lower
        if beta <= 0:
            return ibp
        crown = crown_bounds(model, s, spec, intermediate="ibp", bound_upper=False).lower
        return beta * crown + (1 - beta) * ibp

    def robust_loss(self, model, x, y, eps, step):
        if not self.loss_fusion:
            return super().robust_loss(model, x, y, eps, step)
        s, spec = ball(self.norm, x, eps), margin_spec(y, self.num_classes, x.dtype)
        ibp = interval_bounds(model, s, spec)
        ibp_ce = F.cross_entropy(worst_case_logits(ibp.lower, y, self.num_classes), y)
        beta = self.beta(step)
        if beta <= 0:
            return ibp_ce, ibp.lower
        fused = fused_ce_upper(model, s, y, ibp, self.num_classes).mean()
        return beta * fused + (1 - beta) * ibp_ce, ibp.lower


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
