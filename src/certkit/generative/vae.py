"""The provably robust VAE (proVAE): a VAE with a certified lower bound on its ELBO over an L∞ input box.

Model: encoder ``e(x) = [μ, log σ]`` (two heads sharing all but the last layer), decoder ``g(z)`` ending in a
sigmoid, Gaussian likelihood with fixed σ0. For a noise draw ν ~ N(0, I), z = μ + σ·ν and

    ELBO_ν(x) = −‖x − g(z)‖² / (2σ0²) − (d/2)·log(2πσ0²) − KL(N(μ, σ²) ‖ N(0, I)),
    KL = ½·Σ_k (μ_k² + σ_k² − 1 − 2·log σ_k).

The certified bound (derived here; the paper's printed formulas have sign and min/max slips) holds for every x'
in B = [x − ε, x + ε] ∩ [0, 1] and the same ν:

1. IBP through the encoder on B gives μ ∈ [μ_l, μ_u], log σ ∈ [s_l, s_u].
2. KL ≤ ½·Σ_k (max(μ_l², μ_u²) + max_{s∈{s_l,s_u}} (e^{2s} − 2s) − 1) (μ² and e^{2s} − 2s are convex).
3. z ∈ [μ_l + σ·ν, μ_u + σ·ν] with σ = e^{s_l} or e^{s_u} chosen by the sign of ν per coordinate.
4. IBP through the decoder on that box gives g ∈ [g_l, g_u].
5. ‖x' − g‖² ≤ Σ_i max(|x'_u,i − g_l,i|, |g_u,i − x'_l,i|)² over both boxes (x' appears as the encoder's input and
   as the reconstruction target; bounding them separately is sound).

So ELBO_ν(x') ≥ −(5)/(2σ0²) − (d/2)·log(2πσ0²) − (2) for all x' ∈ B; at ε = 0 the bound equals ELBO_ν(x).
With ``method="crown"`` steps 1 and 4 use CROWN's linear bounds (intersected with IBP, so never looser); the rest
is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from certkit.bounds.interval import interval_bounds
from certkit.models import build
from certkit.specs import Box, LinfBall, SpecError


class VAE(nn.Module):
    """proVAE's architecture (``provae-encoder``/``provae-decoder`` of the model zoo) with latent size ``latent``
    and likelihood scale ``sigma0``; inputs are pixels in [0, 1]."""

    def __init__(self, in_shape=(1, 28, 28), latent: int = 50, hidden: int = 256, sigma0: float = 1.0):
        super().__init__()
        if len(in_shape) != 3 or in_shape[1] % 4 or in_shape[2] % 4 or min(in_shape[1:]) < 4:
            raise SpecError(f"proVAE's decoder upsamples 4× (two stride-2 transposed convolutions): in_shape must "
                            f"be (C, H, W) with H and W multiples of 4, got {tuple(in_shape)}")
        self.in_shape, self.latent, self.sigma0 = tuple(in_shape), latent, sigma0
        self.encoder = build("provae-encoder", in_shape, 0, latent=latent, hidden=hidden)
        self.decoder = build("provae-decoder", (latent,), 0, out_shape=in_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(x)
        return out[:, : self.latent], out[:, self.latent:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction g(μ(x))."""
        return self.decoder(self.encode(x)[0])

    def _log_norm(self) -> float:
        d = math.prod(self.in_shape)
        return 0.5 * d * math.log(2 * math.pi * self.sigma0 ** 2)

    def elbo(self, x: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        """ELBO_ν(x) per input for the noise draw ν (B, latent); average over draws for the expectation."""
        mu, log_sigma = self.encode(x)
        z = mu + log_sigma.exp() * nu
        rec = (x - self.decoder(z)).flatten(1).pow(2).sum(1)
        kl = 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(1)
        return -rec / (2 * self.sigma0 ** 2) - self._log_norm() - kl

    def elbo_bound(self, x: torch.Tensor, eps: float | torch.Tensor, nu: torch.Tensor,
                   method: str = "ibp") -> torch.Tensor:
        """A certified lower bound on ELBO_ν(x') for all x' in [x − ε, x + ε] ∩ [0, 1] (module docstring);
        ``method``: 'ibp' (differentiable, for training) or 'crown' (tighter, for evaluation). ``nu`` (B, latent)
        gives (B,); (D, B, latent), D draws at once, gives (D, B) with the encoder bounded once."""
        if method == "ibp":
            bounds = interval_bounds
        elif method == "crown":
            from certkit.bounds.linear import crown_bounds as bounds
        else:
            raise ValueError(f"method must be 'ibp' or 'crown', got {method!r}")
        box = LinfBall(x, eps, domain=(0.0, 1.0))
        enc = bounds(self.encoder, box)  # independent of ν: once for every draw
        draws = nu.dim() == 3
        nu = nu if draws else nu.unsqueeze(0)  # (D, B, latent)
        D, B = nu.shape[:2]
        mu_l, mu_u = enc.lower[:, : self.latent], enc.upper[:, : self.latent]
        s_l, s_u = enc.lower[:, self.latent:], enc.upper[:, self.latent:]
        kl_up = 0.5 * (torch.maximum(mu_l.pow(2), mu_u.pow(2))
                       + torch.maximum((2 * s_l).exp() - 2 * s_l, (2 * s_u).exp() - 2 * s_u) - 1).sum(1)
        pos = nu >= 0
        z_l = (mu_l + torch.where(pos, s_l.exp(), s_u.exp()) * nu).flatten(0, 1)  # (D·B, latent)
        z_u = (mu_u + torch.where(pos, s_u.exp(), s_l.exp()) * nu).flatten(0, 1)
        finite = (torch.isfinite(z_l) & torch.isfinite(z_u)).all(1)  # σ's bound can overflow exp: then g ∈ [0, 1]
        zero = torch.zeros_like(z_l)
        ok = finite[:, None]
        dec = bounds(self.decoder, Box(torch.where(ok, z_l, zero), torch.where(ok, z_u, zero)))
        view = (-1,) + (1,) * (dec.lower.dim() - 1)
        g_l = torch.where(finite.view(view), dec.lower, torch.zeros_like(dec.lower)).unflatten(0, (D, B))
        g_u = torch.where(finite.view(view), dec.upper, torch.ones_like(dec.upper)).unflatten(0, (D, B))
        far = torch.maximum((box.upper - g_l).abs(), (g_u - box.lower).abs())
        rec_up = far.flatten(2).pow(2).sum(2)
        out = -rec_up / (2 * self.sigma0 ** 2) - self._log_norm() - kl_up
        return out if draws else out[0]


def elbo_attack(vae: VAE, x: torch.Tensor, eps: float, steps: int = 40, step_size: float | None = None,
                samples: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD minimising the expected ELBO (fresh reparameterisation draws each step, ``samples`` of them) over the
    L∞ ball of radius eps clipped to [0, 1]: the out-of-distribution attack. Returns the attacked inputs."""
    s = LinfBall(x.detach(), eps)
    if eps == 0:
        return x.detach()
    step = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    xa = s.sample(1, generator)[0]
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            rep = xa.repeat_interleave(samples, 0)
            nu = torch.randn(rep.shape[0], vae.latent, generator=generator).to(x)
            loss = vae.elbo(rep, nu).sum()
            grad, = torch.autograd.grad(loss, xa)
        xa = s.project(xa.detach() - step * grad.sign())
    return xa.detach()
