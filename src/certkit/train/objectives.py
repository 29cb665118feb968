"""Training objectives: ``objective(model, x, y, step) -> (loss, metrics)``.

* :class:`Standard` — cross-entropy.
* :class:`PGDTraining` — Madry et al. 2018: cross-entropy at a PGD adversarial point.
* :class:`TradesTraining` — Zhang et al. 2019: clean cross-entropy plus β·KL(clean ‖ attacked prediction).
* :class:`IBPTraining` — Gowal et al. 2018: ``κ·CE(f(x), y) + (1−κ)·CE(ẑ, y)`` where ``ẑ`` are the
  worst-case logits from the IBP lower bounds on the margins over the ε-ball, with ε ramped up from 0 and κ
  ramped down from 1.
* :class:`GaussianAugmentation`, :class:`StabilityTraining`, :class:`SmoothAdvTraining` — base classifiers for
  randomized smoothing (Cohen et al. 2019; Li et al. 2019; Salman et al. 2019).
* CROWN-IBP, SABR and MTL-IBP live in :mod:`certkit.train.certified`, COLT in :mod:`certkit.train.colt`.

An L1 penalty on the weights (``l1``) can be added to any objective by the training loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certkit.attacks.pgd import pgd
from certkit.attacks.smoothed import smoothadv_attack
from certkit.bounds.interval import interval_bounds
from certkit.smoothing.smooth import Noise, noisy_forward
from certkit.specs import ball, margin_spec, worst_case_logits
from certkit.train.fast_ibp import ibp_init, warmup_regularizer
from certkit.train.schedules import Ramp

OBJECTIVES = ("standard", "pgd", "trades", "ibp", "crown-ibp", "sabr", "mtl-ibp", "colt", "gaussian", "stability",
              "smoothadv")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block (an attack inside a training step), then back in its former mode."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class Objective:
    """Returns (loss, metrics); metric values are floats or detached 0-d tensors, so that a training step
    never waits for the device just to log."""

    name = "objective"
    channels_last = False  # only plain forward passes: the loop may store conv nets channels-last (faster on CPU)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int):
        raise NotImplementedError

    def lr_at(self, epoch: float) -> float | None:
        """The learning rate at a (fractional) epoch if the objective owns its schedule (COLT); None: the
        config's (``lr`` decayed by ``lr_gamma`` at ``lr_milestones``)."""
        return None

    def prepare(self, model: nn.Module) -> None:
        """Called once on a freshly initialised model (not one fine-tuned from a checkpoint; a resumed run's
        weights are restored afterwards), e.g. for an objective's own initialisation."""

    def end_epoch(self, epoch: int, out: Path) -> None:
        """Called once epoch ``epoch`` (0-based) is saved in ``out`` (``model.safetensors``)."""


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


class TradesTraining(Objective):
    """TRADES (Zhang et al. 2019, eq. 5): ``CE(f(x), y) + β·KL(p(x) ‖ p(x'))``, the KL per input averaged over the
    batch, with x' maximising that KL over the ε-ball (∩ [0, 1]): PGD on the KL from x + 0.001·N(0, I), the clean
    prediction held fixed, the network in eval mode (their Algorithm 1)."""

    name = "trades"

    def __init__(self, eps: Ramp, beta: float = 6.0, norm: str = "inf", steps: int = 10,
                 step_size: float | None = None):
        if beta < 0:
            raise ValueError(f"TRADES' β must be non-negative, got {beta}")
        self.eps, self.beta, self.norm, self.steps, self.step_size = eps, beta, norm, steps, step_size

    @staticmethod
    def kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
        """KL(p(x) ‖ p(x')) per input (B,)."""
        p_log = F.log_softmax(clean_logits, 1)
        return (p_log.exp() * (p_log - F.log_softmax(adv_logits, 1))).sum(1)

    def attack(self, model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The inner maximisation: x' of the ε-ball with (locally) the largest KL from the clean prediction."""
        from certkit.attacks.pgd import _normalise_grad

        s = ball(self.norm, x.detach(), eps)
        step = eps * 2.5 / max(self.steps, 1) if self.step_size is None else self.step_size
        with eval_mode(model):
            with torch.no_grad():
                clean = model(x).detach()
            xa = s.project(x.detach() + 0.001 * torch.randn_like(x))
            for _ in range(self.steps):
                xa.requires_grad_(True)
                with torch.enable_grad():
                    grad, = torch.autograd.grad(self.kl(clean, model(xa)).sum(), xa)
                xa = s.project(xa.detach() + step * _normalise_grad(grad, s.p))
        return xa.detach()

    def __call__(self, model, x, y, step):
        eps = self.eps(step)
        logits = model(x)
        natural = F.cross_entropy(logits, y)
        metrics = {"acc": (logits.argmax(1) == y).float().mean(), "eps": eps}
        if eps <= 0 or self.beta == 0:
            metrics["loss"] = natural.detach()
            return natural, metrics
        adv_logits = model(self.attack(model, x, eps))
        robust = self.kl(logits, adv_logits).mean()
        loss = natural + self.beta * robust
        metrics.update({"kl": robust.detach(), "adv_acc": (adv_logits.argmax(1) == y).float().mean(),
                        "loss": loss.detach()})
        return loss, metrics


class IBPTraining(Objective):
    """The robust loss ``κ·CE(f(x), y) + (1−κ)·CE(ẑ, y)`` with ẑ from :meth:`robust_lower` (IBP here; CROWN-IBP and
    SABR in :mod:`certkit.train.certified` change only that method)."""

    name = "ibp"
    metric = "ibp_acc"  # the fraction of the batch whose margins' lower bounds are positive

    def __init__(self, eps: Ramp, kappa: Ramp, num_classes: int = 10, norm: str = "inf", init: bool = False,
                 warmup_reg: float = 0.0, tol: float = 0.5):
        self.eps, self.kappa, self.num_classes, self.norm = eps, kappa, num_classes, norm
        self.init, self.warmup_reg, self.tol = init, warmup_reg, tol

    def prepare(self, model: nn.Module) -> None:
        if self.init:
            ibp_init(model)

    def regularizer(self, model: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor | None:
        """Shi et al.'s warm-up regulariser, λ·(1 − ε_t/ε)·(tightness + ReLU balance), while ε ramps up."""
        if self.warmup_reg <= 0 or eps >= self.eps.end or eps <= 0:
            return None
        _, nodes = interval_bounds(model, ball(self.norm, x, eps), return_all=True)
        return self.warmup_reg * (1 - eps / self.eps.end) * warmup_regularizer(model, nodes, eps, self.tol)

    def robust_lower(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: int) -> torch.Tensor:
        """Lower bounds of the margins ``f_y − f_j`` (B, K − 1) over the ε-ball."""
        return interval_bounds(model, ball(self.norm, x, eps), margin_spec(y, self.num_classes, x.dtype)).lower

    def robust_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                    step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The robust loss (an upper bound of the worst-case CE for IBP and CROWN-IBP) and the margins' lower
        bounds behind the batch's certified share."""
        lower = self.robust_lower(model, x, y, eps, step)
        return F.cross_entropy(worst_case_logits(lower, y, self.num_classes), y), lower

    def __call__(self, model, x, y, step):
        eps, kappa = self.eps(step), self.kappa(step)
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        metrics = {"acc": (logits.argmax(1) == y).float().mean(), "eps": eps, "kappa": kappa}
        if eps <= 0 or kappa >= 1:
            metrics["loss"] = clean.detach()
            return clean, metrics
        robust, lower = self.robust_loss(model, x, y, eps, step)
        loss = kappa * clean + (1 - kappa) * robust
        metrics.update({"robust_loss": robust.detach(),
                        self.metric: (lower.detach().min(1).values > 0).float().mean()})
        reg = self.regularizer(model, x, eps)
        if reg is not None:
            loss = loss + reg
            metrics["warmup_reg"] = reg.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


def _noise(noise: Noise | float) -> Noise:
    return noise if isinstance(noise, Noise) else Noise("gaussian", float(noise))


class GaussianAugmentation(Objective):
    """Cohen et al. 2019: cross-entropy on noisy inputs (pixel space). The noise is Gaussian of standard deviation
    σ (a float), or any :class:`~certkit.smoothing.smooth.Noise` (Laplace and uniform bases for their L1
    certificates); it is drawn from the global RNG, which the training loop seeds and checkpoints."""

    name = "gaussian"
    channels_last = True

    def __init__(self, noise: Noise | float):
        self.noise = _noise(noise)

    def __call__(self, model, x, y, step):
        logits = model(x + self.noise.sample(x.shape, None, x.device, x.dtype))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "noisy_acc": (logits.argmax(1) == y).float().mean()}


class StabilityTraining(Objective):
    """STN (Li et al. 2019), stability training: ``CE(f(x), y) + γ·CE(softmax f(x), f(x + n))`` with n drawn from
    ``noise`` (Gaussian of standard deviation σ for a float; the clean prediction is the soft target of the noisy
    one)."""

    name = "stability"
    channels_last = True

    def __init__(self, noise: Noise | float, gamma: float = 1.0):
        self.noise, self.gamma = _noise(noise), gamma

    def __call__(self, model, x, y, step):
        clean = model(x)
        noisy = model(x + self.noise.sample(x.shape, None, x.device, x.dtype))
        ce = F.cross_entropy(clean, y)
        stab = F.cross_entropy(noisy, F.softmax(clean, 1))
        loss = ce + self.gamma * stab
        return loss, {"loss": loss.detach(), "stability": stab.detach(), "acc": (clean.argmax(1) == y).float().mean(),
                      "noisy_acc": (noisy.argmax(1) == y).float().mean()}


class SmoothAdvTraining(Objective):
    """SmoothAdv (Salman et al. 2019): train on ``x' + n_i`` (i = 1..m, multi-noise: the loss averages the m
    copies), x' from :func:`smoothadv_attack` with the same draws, ε warmed up by a ramp."""

    name = "smoothadv"
    channels_last = True

    def __init__(self, eps: Ramp, noise: Noise | float, m: int = 1, steps: int = 1, no_grad: bool = False):
        self.eps, self.noise, self.m, self.steps, self.no_grad = eps, _noise(noise), m, steps, no_grad

    def __call__(self, model, x, y, step):
        eps = self.eps(step)
        noise = self.noise.sample((x.shape[0], self.m, *x.shape[1:]), None, x.device, x.dtype)
        if eps > 0:
            with eval_mode(model):
                x = smoothadv_attack(model, x, y, noise, eps, self.steps, no_grad=self.no_grad)
        logits = noisy_forward(model, x, noise).flatten(0, 1)
        yy = y.repeat_interleave(self.m)
        loss = F.cross_entropy(logits, yy)
        return loss, {"loss": loss.detach(), "eps": eps, "adv_noisy_acc": (logits.argmax(1) == yy).float().mean()}


def build_objective(cfg: Any, steps_per_epoch: int, num_classes: int, model: nn.Module | None = None) -> Objective:
    """The objective a :class:`~certkit.train.loop.TrainConfig` names, with its ramps in steps: ε (and IBP's κ)
    stay at their start for ``warmup_epochs``, then go linearly to their end over ``ramp_epochs``."""
    begin, length = round(cfg.warmup_epochs * steps_per_epoch), round(cfg.ramp_epochs * steps_per_epoch)
    eps = Ramp(0.0, cfg.eps, begin, length)
    if cfg.objective == "colt":
        from certkit.train.colt import ColtTraining, colt_schedule, latent_layers

        c = cfg.colt
        return ColtTraining(colt_schedule(cfg), latent_layers(model, c.layers), steps_per_epoch, c.attack_steps,
                            c.attack_step, c.projections, c.nat_factor, cfg.pgd_steps)
    sm = cfg.smoothing
    kappa = Ramp(cfg.kappa_start, cfg.kappa_end, begin, length)
    if cfg.objective in ("crown-ibp", "sabr", "mtl-ibp"):
        from certkit.train.certified import CrownIbpTraining, MtlIbpTraining, SabrTraining

        c = cfg.certified
        fast = {"init": c.ibp_init, "warmup_reg": c.warmup_reg, "tol": c.warmup_tol}
        return {"crown-ibp": lambda: CrownIbpTraining(eps, kappa, Ramp(c.beta_start, c.beta_end, begin, length),
                                                      num_classes, cfg.norm, c.loss_fusion, **fast),
                "sabr": lambda: SabrTraining(eps, kappa, c.sabr_lambda, num_classes, cfg.norm, cfg.pgd_steps, **fast),
                "mtl-ibp": lambda: MtlIbpTraining(eps, c.alpha, c.combination, num_classes, cfg.norm, cfg.pgd_steps),
                }[cfg.objective]()
    builders = {
        "standard": lambda: Standard(),
        "gaussian": lambda: GaussianAugmentation(sm.as_noise()),
        "stability": lambda: StabilityTraining(sm.as_noise(), sm.stability_gamma),
        # SmoothAdv: the L2 attack radius warms up like ε
        "smoothadv": lambda: SmoothAdvTraining(eps, sm.as_noise(), sm.m, sm.steps, sm.no_grad),
        "pgd": lambda: PGDTraining(eps, cfg.norm, cfg.pgd_steps, cfg.pgd_step_size),
        "trades": lambda: TradesTraining(eps, cfg.trades_beta, cfg.norm, cfg.pgd_steps, cfg.pgd_step_size),
        "ibp": lambda: IBPTraining(eps, kappa, num_classes, cfg.norm, cfg.certified.ibp_init,
                                   cfg.certified.warmup_reg, cfg.certified.warmup_tol),
    }
    if cfg.objective not in builders:
        raise ValueError(f"unknown objective {cfg.objective!r}; use one of {', '.join(OBJECTIVES)}")
    return builders[cfg.objective]()
