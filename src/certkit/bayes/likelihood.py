"""Log-likelihoods for Bayesian inference, evaluated functionally (``params`` swapped into ``model``).

* :func:`standard_loglik` — Σ log softmax_y f_w(x).
* :func:`robust_loglik` — Wicker et al. 2021, eq. (4): Σ log(λ·softmax_y f_w(x) + (1 − λ)·softmax_y f_w^{ε,min}(x)),
  the worst case over the ε-ball lower-bounded by IBP (their Proposition 1: softmax_y ≥ 1/(1 + Σ_j exp(−L_yj)),
  L the margin lower bounds) or approximated by PGD (the paper's middle column).
* :func:`robust_gaussian_loglik` — the regression form (their Remark 1): the Gaussian density at the worst output
  in the IBP interval of f_w over the ball.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.specs import LinearSpec, LinfBall
from certkit.train.schedules import Ramp


class _Bounded(nn.Module):
    """IBP (or CROWN-IBP) margin lower bounds of ``model`` as a module, so that functional_call swaps the weights
    in."""

    def __init__(self, model: nn.Module, method: str = "ibp"):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x, y, eps, k):
        eye = torch.eye(k, dtype=x.dtype, device=x.device)
        spec = LinearSpec(eye[y].unsqueeze(1) - eye.unsqueeze(0), validate=False)  # rows e_y − e_j (row y: 0)
        ball = LinfBall(x, eps, validate=False)
        if self.method == "crown":
            return crown_bounds(self.model, ball, spec, intermediate="ibp").lower
        return interval_bounds(self.model, ball, spec).lower


class _Outputs(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, eps):
        return interval_bounds(self.model, LinfBall(x, eps, validate=False))


def _prefixed(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in params.items()}


def standard_loglik(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(functional_call(model, params, (x,)), y, reduction="sum")


def worst_softmax_bound(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      eps: float, num_classes: int, method: str = "ibp") -> torch.Tensor:
    """log of a lower bound on softmax_y over the ε-ball (B,): −log Σ_j exp(−L_yj), L_yy = 0, L the margin lower
    bounds by IBP (vmap-safe: no data-dependent shapes or checks, so per-example gradients work) or, with
    ``method='crown'``, by CROWN-IBP (Zhang et al. 2020: one backward pass on IBP's intermediate bounds)."""
    if method not in ("ibp", "crown"):
        raise ValueError(f"method must be 'ibp' or 'crown', got {method!r}")
    L = functional_call(_Bounded(model, method), _prefixed(params), (x, y, eps, num_classes))
    return -torch.logsumexp(-L, 1)


def robust_loglik(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  eps: float, lam: float = 0.25, worst: str = "ibp", num_classes: int = 10,
                  pgd_steps: int = 10, mix: str = "prob", x_adv: torch.Tensor | None = None) -> torch.Tensor:
    """Σ log(λ·p_y(x) + (1 − λ)·p_y^{worst}(x)); ``worst``: 'ibp' (a sound lower bound) or 'pgd' (an attack).

    ``mix='log'`` mixes in log space instead, Σ λ·log p_y + (1 − λ)·log p_y^{worst}: a lower bound of the above
    (log is concave) whose gradient does not vanish when p^{worst} ≪ p.
    ``x_adv``: PGD's inputs computed beforehand (:func:`pgd_inputs`), e.g. outside a vmap over examples."""
    log_clean = F.log_softmax(functional_call(model, params, (x,)), 1).gather(1, y[:, None]).squeeze(1)
    if eps <= 0 or lam >= 1:
        return log_clean.sum()
    if worst in ("ibp", "crown"):
        log_worst = worst_softmax_bound(model, params, x, y, eps, num_classes, worst)
    elif worst == "pgd":
        xa = pgd_inputs(model, params, x, y, eps, pgd_steps) if x_adv is None else x_adv
        log_worst = F.log_softmax(functional_call(model, params, (xa,)), 1).gather(1, y[:, None]).squeeze(1)
    else:
        raise ValueError(f"worst must be 'ibp', 'crown' or 'pgd', got {worst!r}")
    if mix == "log":
        return (lam * log_clean + (1 - lam) * log_worst).sum()
    if mix != "prob":
        raise ValueError(f"mix must be 'prob' or 'log', got {mix!r}")
    out = torch.logsumexp(torch.stack([log_clean + math.log(lam), log_worst + math.log(1 - lam)]), 0) if lam > 0 \
        else log_worst
    return out.sum()


def pgd_inputs(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
               steps: int = 10) -> torch.Tensor:
    """L∞ PGD (true label, projected every step) against the network with weights ``params`` (held fixed: the
    attack is not differentiated through)."""
    from certkit.attacks.pgd import pgd

    fixed = {k: v.detach() for k, v in params.items()}

    class Net(nn.Module):
        def forward(self, z):
            return functional_call(model, fixed, (z,))

    return pgd(Net(), x, y, eps, "inf", steps).x_adv


def robust_gaussian_loglik(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                           eps: float, noise: float = 1.0, lam: float = 0.25) -> torch.Tensor:
    """Regression: λ·N(y; f(x), noise²) + (1 − λ)·N(y; f^{worst}, noise²), the worst output being the end of the
    IBP interval of f over the ball farthest from y (a lower bound of the density over the ball)."""
    out = functional_call(model, params, (x,))
    def logn(mu):
        return -0.5 * ((y - mu) / noise) ** 2 - math.log(noise * math.sqrt(2 * math.pi))

    b = functional_call(_Outputs(model), _prefixed(params), (x, eps))
    far = torch.where((y - b.lower).abs() > (y - b.upper).abs(), b.lower, b.upper)
    mix = torch.logsumexp(torch.stack([logn(out) + math.log(lam), logn(far) + math.log(1 - lam)]), 0)
    return mix.sum()


class ScheduledLoglik:
    """A likelihood whose ε follows :func:`eps_schedule`: the inference loops call ``set_epoch(e)`` at the start of
    every epoch (``None``: the full ε, e.g. for HMC after its SGD warm start)."""

    def __init__(self, loglik, eps: float, ramp_epochs: int, pgd_steps: int | None = None):
        self.loglik, self.target, self.ramp_epochs, self.pgd_steps = loglik, eps, ramp_epochs, pgd_steps
        self.eps = eps

    @property
    def needs_attack(self) -> bool:
        """True for the PGD likelihood: per-example gradients (vmap) need the attack run beforehand."""
        return self.pgd_steps is not None and self.eps > 0

    def attack(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        return pgd_inputs(model, params, x, y, self.eps, self.pgd_steps)

    def set_epoch(self, epoch: int | None) -> None:
        self.eps = self.target if epoch is None else eps_schedule(self.target, epoch, self.ramp_epochs)

    def __call__(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, **kw) -> torch.Tensor:
        return self.loglik(model, params, x, y, eps=self.eps, **kw)


def eps_schedule(eps: float, epoch: int, ramp_epochs: int) -> float:
    """Linear ramp that reaches ``eps`` at the last ramp epoch (epoch counted from 0): the authors' code stops at
    E/(E+1)·ε; this one does not. The library's one :class:`~certkit.train.schedules.Ramp`, per epoch."""
    return Ramp(0.0, eps, 0, max(ramp_epochs - 1, 0))(epoch)
