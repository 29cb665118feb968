"""Attacks on smoothed (and other stochastic) classifiers: empirical robustness to set beside certificates.

* :func:`smoothadv_pgd` — Salman et al. 2019: L2 PGD on the soft smoothed classifier
  ``−log((1/m)·Σ_i softmax(f(x' + n_i))_y)`` with m draws fixed for the whole attack.
* :func:`smoothadv_ddn` — the same objective with Decoupled Direction and Norm steps (Rony et al. 2019): the
  direction follows the gradient, the radius shrinks while adversarial and grows otherwise, up to ``eps``.
* :func:`eot_pgd` — L∞ PGD with the expectation over noise (EOT): gradients of the cross-entropy averaged over
  fresh draws each step, projected every step, clipped to [0, 1].
* :func:`eot_cw` — a Carlini–Wagner L2 attack on the noise-averaged logits (STN §6.2): minimise
  ``‖δ‖² + c·max(z_y − max_{j≠y} z_j, −κ)`` with Adam in tanh space, keeping the smallest successful δ.

Success is judged by the smoothed classifier's majority vote over fresh draws (``vote``), not by the draws the
attack used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certkit.smoothing.smooth import Noise, noisy_forward
from certkit.specs import L2Ball, LinfBall


def soft_smoothed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SmoothAdv's objective: −log of the soft smoothed classifier's probability of y, the softmax averaged
    over the noise draws (B, m, ...) -> (B,)."""
    probs = F.softmax(noisy_forward(model, x, noise), 2).mean(1)
    return -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).squeeze(1)


def smoothadv_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, eps: float,
                     steps: int, step_size: float | None = None, no_grad: bool = False) -> torch.Tensor:
    """SmoothAdv's PGD (Salman et al. 2019) with given noise draws ``noise`` (B, m, ...), the same at every
    step: see :func:`smoothadv_pgd`.

    ``no_grad``: the paper's cheap variant without backpropagation through the base classifier. For Gaussian
    noise, ∇ₓ E[p_y(x + n)] = E[n·p_y(x + n)]/σ² (Stein's lemma), so the ascent direction of
    −log mean_i p_y(x + n_i) is estimated by −Σ_i n_i·(p_i − p̄) (a baseline p̄ for variance; the step is
    normalised, so σ² drops out)."""
    s = L2Ball(x.detach(), eps)
    step = 2 * eps / max(steps, 1) if step_size is None else step_size
    xa = x.detach().clone()
    for _ in range(steps):
        if no_grad:
            with torch.no_grad():
                B, m = noise.shape[:2]
                p = torch.softmax(noisy_forward(model, xa, noise), 2).gather(2, y.view(B, 1, 1).expand(B, m, 1))
                p = p.squeeze(2)
                w = (p - p.mean(1, keepdim=True)).view(B, m, *([1] * (x.dim() - 1)))
                grad = -(w * noise).sum(1)
        else:
            xa.requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(soft_smoothed_loss(model, xa, y, noise).sum(), xa)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        xa = s.project(xa.detach() + step * grad / norm)
    return xa.detach()


def smoothadv_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, sigma: float, m: int = 1,
                  steps: int = 10, step_size: float | None = None, generator: torch.Generator | None = None,
                  noise: str = "gaussian") -> torch.Tensor:
    draws = Noise(noise, sigma).sample((x.shape[0], m, *x.shape[1:]), generator, x.device, x.dtype)
    return smoothadv_attack(model, x, y, draws, eps, steps, step_size)


def smoothadv_ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, sigma: float, m: int = 1,
                  steps: int = 10, gamma: float = 0.05, init_norm: float = 1.0,
                  generator: torch.Generator | None = None, noise: str = "gaussian") -> torch.Tensor:
    draws = Noise(noise, sigma).sample((x.shape[0], m, *x.shape[1:]), generator, x.device, x.dtype)
    shape = (-1, *([1] * (x.dim() - 1)))
    delta = torch.zeros_like(x)
    norm = torch.full((x.shape[0],), min(init_norm, eps), dtype=x.dtype, device=x.device)
    alpha0 = 1.0
    for k in range(steps):
        alpha = 0.01 + (alpha0 - 0.01) * (1 + torch.cos(torch.tensor(k / steps * torch.pi))) / 2  # cosine decay
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = soft_smoothed_loss(model, x + delta, y, draws)
            grad, = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            adv = F.softmax(noisy_forward(model, x + delta, draws), 2).mean(1).argmax(1) != y
            norm = torch.where(adv, norm * (1 - gamma), norm * (1 + gamma)).clamp(max=eps)
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = delta.detach() + alpha * g
            delta = delta * (norm / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(shape)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def eot_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, sigma: float, samples: int = 8,
            steps: int = 40, step_size: float | None = None, noise: str = "gaussian",
            generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ PGD against the expectation over noise of the cross-entropy (fresh draws at every step)."""
    nz = Noise(noise, sigma)
    s = LinfBall(x.detach(), eps)
    step = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    xa = s.sample(1, generator)[0]
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            noise = nz.sample((x.shape[0], samples, *x.shape[1:]), generator, x.device, x.dtype)
            loss = F.cross_entropy(noisy_forward(model, xa, noise).flatten(0, 1), y.repeat_interleave(samples))
            grad, = torch.autograd.grad(loss, xa)
        xa = s.project(xa.detach() + step * grad.sign())
    return xa.detach()


def eot_cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, c: float = 1.0, kappa: float = 0.0,
           samples: int = 8, steps: int = 100, lr: float = 0.01, noise: str = "gaussian",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Carlini–Wagner L2 on noise-averaged logits; returns the smallest δ found that fools the averaged logits
    (x itself where none did). ``sigma = 0``: plain C&W on the model's own logits (one noiseless draw)."""
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    nz = Noise(noise, sigma) if sigma > 0 else None
    w = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6)).detach().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_norm = x.detach().clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            xa = (torch.tanh(w) + 1) / 2
            noise = nz.sample((x.shape[0], samples, *x.shape[1:]), generator, x.device, x.dtype) if nz else \
                torch.zeros((x.shape[0], 1, *x.shape[1:]), device=x.device, dtype=x.dtype)
            z = noisy_forward(model, xa, noise).mean(1)
            zy = z.gather(1, y[:, None]).squeeze(1)
            other = z.scatter(1, y[:, None], -float("inf")).amax(1)
            dist = (xa - x).flatten(1).pow(2).sum(1)
            loss = (dist + c * (zy - other).clamp(min=-kappa)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            better = (other > zy) & (dist.sqrt() < best_norm)
            best[better], best_norm[better] = xa.detach()[better], dist.sqrt()[better]
    return best


@torch.no_grad()
def vote(model: nn.Module, x: torch.Tensor, sigma: float, n: int = 100, noise: str = "gaussian",
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The smoothed classifier's majority vote over n fresh draws (no abstention)."""
    nz = Noise(noise, sigma)
    out = noisy_forward(model, x, nz.sample((x.shape[0], n, *x.shape[1:]), generator, x.device, x.dtype))
    pred = out.argmax(2)
    return torch.zeros(x.shape[0], out.shape[2], device=x.device).scatter_add_(
        1, pred, torch.ones(x.shape[0], n, device=x.device)).argmax(1)
