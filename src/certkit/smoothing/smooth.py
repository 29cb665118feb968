"""Randomized smoothing: g(x) = argmax_c P(f(x + noise) = c), predicted and certified from Monte Carlo counts
(Cohen, Rosenfeld & Kolter 2019, Algorithm PREDICT and CERTIFY), with Gaussian, Laplace or uniform noise.

Counting is batched over inputs and noise draws together (one forward pass of ``batch_size`` noisy copies at a
time) and reduced on the device; a seeded ``torch.Generator`` makes a run reproducible. Noise is added in pixel
space: keep the input normalisation inside the base classifier.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from certkit import rng
from certkit.smoothing import certificates as cert


@dataclass(frozen=True)
class CertificateRule:
    """One certificate: the noise it needs, the norm of its radius, whether it needs a runner-up bound p_B
    (two-class: p_A and p_B each at level α/2), and its radius from (p_A lower, p_B upper, noise scale)."""

    noise: str
    norm: str
    two_class: bool
    radius: Callable[[np.ndarray, np.ndarray, float], np.ndarray]


RULES: dict[str, CertificateRule] = {
    "cohen": CertificateRule("gaussian", "2", False, lambda pa, pb, s: cert.cohen_radius(pa, s)),
    "cohen2": CertificateRule("gaussian", "2", True, cert.cohen_two_class_radius),
    "renyi": CertificateRule("gaussian", "2", True, cert.renyi_radius),
    "pixeldp": CertificateRule("gaussian", "2", True, cert.pixeldp_radius),
    "laplace": CertificateRule("laplace", "1", True, cert.laplace_radius),
    "laplace1": CertificateRule("laplace", "1", False, lambda pa, pb, s: cert.laplace_radius(pa, None, s)),
    "uniform": CertificateRule("uniform", "1", False, lambda pa, pb, s: cert.uniform_l1_radius(pa, s)),
}
# derived views: the certificates of each noise, and each certificate's norm
CERTIFICATES = {kind: tuple(n for n, r in RULES.items() if r.noise == kind) for kind in ("gaussian", "laplace",
                                                                                         "uniform")}
NORM_OF = {n: r.norm for n, r in RULES.items()}


def noisy_forward(model: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The model's outputs on the noisy copies ``x + noise_i``: x (B, ...), noise (B, m, ...) -> (B, m, K), in
    one batch of B·m inputs (every smoothing prediction, attack and training objective goes through here)."""
    B, m = noise.shape[:2]
    return model((x.unsqueeze(1) + noise).flatten(0, 1)).view(B, m, -1)


@dataclass
class Noise:
    """``kind``: 'gaussian' (σ = scale), 'laplace' (scale λ: density ∝ exp(−|z|/λ)) or 'uniform' (on [−λ, λ])."""

    kind: str
    scale: float

    def __post_init__(self) -> None:
        if self.kind not in CERTIFICATES:
            raise ValueError(f"unknown noise {self.kind!r}; use gaussian, laplace or uniform")
        if not self.scale > 0:
            raise ValueError(f"noise scale must be positive, got {self.scale}")

    def sample(self, shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
        if self.kind == "gaussian":
            return rng.normal(shape, generator, dtype, device).mul_(self.scale)
        u = rng.uniform(shape, generator, dtype, device)
        if self.kind == "uniform":
            return u.mul_(2 * self.scale).sub_(self.scale)
        u = u - 0.5  # inverse CDF of the Laplace distribution
        return -self.scale * u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


@dataclass
class SmoothResult:
    """Per input: ``pred`` (−1 = abstain), ``radius`` (nan where abstaining), the probability bounds and counts."""

    pred: np.ndarray
    radius: np.ndarray
    pa_lower: np.ndarray
    pb_upper: np.ndarray
    counts: np.ndarray
    norm: str
    top: np.ndarray | None = None  # the class chosen by the n0 selection draws


class Smooth:
    """The smoothed classifier of ``base`` (logits over ``num_classes``) under ``noise``."""

    def __init__(self, base: nn.Module, num_classes: int, noise: Noise, batch_size: int = 1000):
        self.base, self.num_classes, self.noise, self.batch_size = base, num_classes, noise, batch_size

    @torch.no_grad()
    def counts(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Votes (B, K) of the base classifier on n noisy copies of each input."""
        if not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or inf")
        B = x.shape[0]
        out = torch.zeros(B, self.num_classes, dtype=torch.long, device=x.device)
        per = max(1, self.batch_size // max(1, n))  # inputs per forward pass when n is small
        if per > 1:
            for i in range(0, B, per):
                xb = x[i:i + per]
                out[i:i + per] = self._votes(xb, n, generator)
            return out
        for b in range(B):  # n ≥ batch size: draws of one input per forward pass
            done = 0
            while done < n:
                m = min(self.batch_size, n - done)
                out[b:b + 1] += self._votes(x[b:b + 1], m, generator)
                done += m
        return out

    def _votes(self, x: torch.Tensor, m: int, generator) -> torch.Tensor:
        B = x.shape[0]
        noise = self.noise.sample((B, m, *x.shape[1:]), generator, x.device, x.dtype)
        pred = noisy_forward(self.base, x, noise).argmax(2)
        votes = torch.zeros(B, self.num_classes, dtype=torch.long, device=x.device)
        return votes.scatter_add_(1, pred, torch.ones_like(pred))

    def predict(self, x: torch.Tensor, n: int, alpha: float, generator: torch.Generator | None = None) -> np.ndarray:
        """Cohen's PREDICT: the top class, or −1 (abstain) when a two-sided binomial test of the top two counts
        has p-value above α."""
        c = self.counts(x, n, generator).cpu().numpy()
        top2 = np.argsort(-c, axis=1, kind="stable")[:, :2]
        na, nb = c[np.arange(len(c)), top2[:, 0]], c[np.arange(len(c)), top2[:, 1]]
        p = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in zip(na, nb)])
        return np.where(p <= alpha, top2[:, 0], -1)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, certificate: str = "cohen",
                generator: torch.Generator | None = None) -> SmoothResult:
        """Cohen's CERTIFY: n0 draws select the class ĉ, n fresh draws bound its probability; the radius comes
        from ``certificate`` (see :data:`CERTIFICATES` for those that fit the noise). Two-class certificates
        bound p_A below at α/2 and every other class above at α/(2(K−1)) (Bonferroni: all hold with
        probability ≥ 1 − α), p_B = the largest of those, at most 1 − p_A."""
        if certificate not in CERTIFICATES[self.noise.kind]:
            raise ValueError(f"certificate {certificate!r} does not fit {self.noise.kind} noise; use one of "
                             f"{CERTIFICATES[self.noise.kind]}")
        if cert.max_certifiable_pa(n, alpha) <= 0.5:
            warnings.warn(f"N = {n} draws can never certify at alpha = {alpha}: even n_A = N gives "
                          f"p_A >= {cert.max_certifiable_pa(n, alpha):.3f} <= 1/2", stacklevel=2)
        c0 = self.counts(x, n0, generator).cpu().numpy()
        top = c0.argmax(1)
        c = self.counts(x, n, generator).cpu().numpy()
        pred, radius, pa, pb = certify_counts(c, top, alpha, certificate, self.noise.scale)
        return SmoothResult(pred, radius, pa, pb, c, NORM_OF[certificate], top)


class CompiledBase(nn.Module):
    """``model`` compiled by ``torch.compile`` for inference (``dynamic=False``: one compilation of a few seconds per
    batch shape; LeNet certification runs 2x faster on a CPU core, ``benchmarks/smoothing_speed.py --compile``).
    Where compilation fails (no C compiler, an unsupported platform or op) it warns once and runs ``model`` eagerly.
    The state dict is ``model``'s."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.__dict__["compiled"] = torch.compile(model, dynamic=False)  # not a submodule: no second state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to the eager model
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eagerly",
                              stacklevel=2)
                self.__dict__["compiled"] = None
        return self.model(x)


def certify_counts(c: np.ndarray, top: np.ndarray, alpha: float, certificate: str, scale: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The second half of CERTIFY, from the counts ``c`` (B, K) of the N bound draws and the selected classes
    ``top``: (pred, radius, p_A lower, p_B upper). Used by :meth:`Smooth.certify`, and to compare certificates on
    the same counts."""
    n = c.sum(1)
    na = c[np.arange(len(c)), top]
    K = c.shape[1]
    rule = RULES[certificate]
    two = rule.two_class
    pa = cert.clopper_pearson(na, n, alpha / 2 if two else alpha)[0]
    others = c.copy()
    others[np.arange(len(c)), top] = -1
    pb = cert.clopper_pearson(np.maximum(others, 0), n[:, None], alpha / (2 * max(K - 1, 1)))[1]
    pb = np.where(others >= 0, pb, 0.0).max(1)
    pb = np.minimum(pb, 1 - pa)
    radius = rule.radius(pa, pb, scale)
    return np.where(np.isnan(radius), -1, top), radius, pa, pb


def certified_accuracy(radius: np.ndarray, correct: np.ndarray, radii) -> np.ndarray:
    """Approximate certified accuracy (Cohen et al.): the fraction of inputs certified correctly at ≥ r."""
    radius, correct = np.asarray(radius, float), np.asarray(correct, bool)
    ok = correct[:, None] & (np.nan_to_num(radius, nan=-1.0)[:, None] >= np.asarray(radii, float)[None, :])
    return ok.mean(0)


def certified_accuracy_lower(radius: np.ndarray, correct: np.ndarray, radii, alpha: float,
                             confidence: float = 0.001) -> np.ndarray:
    """A high-probability lower bound on certified accuracy: each certificate fails with probability ≤ α, so
    the number of wrong certificates among k is at most the (1 − confidence) quantile of Binomial(k, α)."""
    radius, correct = np.asarray(radius, float), np.asarray(correct, bool)
    n = len(radius)
    out = []
    for r in np.asarray(radii, float):
        k = int((correct & (np.nan_to_num(radius, nan=-1.0) >= r)).sum())
        wrong = stats.binom.ppf(1 - confidence, k, alpha) if k > 0 else 0
        out.append(max(k - wrong, 0) / n)
    return np.array(out)


def max_certifiable_radius(noise: Noise, n: int, alpha: float) -> float:
    """The largest Cohen radius n draws can certify: σ·Φ⁻¹(α^(1/n))."""
    return float(noise.scale * stats.norm.ppf(cert.max_certifiable_pa(n, alpha))) if noise.kind == "gaussian" \
        else math.nan
