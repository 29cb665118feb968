"""Certified radii of smoothed classifiers from class-probability bounds, and the bounds from counts.

All functions are vectorised over numpy arrays (scalars work too); a radius is ``nan`` where nothing is
certified (the smoothed classifier abstains).

* :func:`cohen_radius` — Gaussian noise, L2 (Cohen, Rosenfeld & Kolter 2019, Theorem 1): σ·Φ⁻¹(p_A).
* :func:`cohen_two_class_radius` — the same theorem with a runner-up bound: σ/2·(Φ⁻¹(p_A) − Φ⁻¹(p_B)).
* :func:`renyi_radius` — Gaussian noise, L2 (Li et al. 2019, STN, Theorem 2 with the Gaussian Renyi divergence
  α‖δ‖²/(2σ²)): ‖δ‖² < sup_{α>1} −(2σ²/α)·log(1 − p_A − p_B + 2·M_{1−α}(p_A, p_B)), M the power mean.
* :func:`laplace_radius` — Laplace noise of scale λ, L1 (STN): −λ·log(1 − p_A + p_B), and the one-class form
  −λ·log(2(1 − p_A)) when p_B = 1 − p_A.
* :func:`uniform_l1_radius` — uniform noise on [−λ, λ]^d, L1: 2λ(p_A − ½).
* :func:`pixeldp_radius` — PixelDP's Gaussian-mechanism bound (Lecuyer et al. 2019), for comparison.
* :func:`linf_from_l2` — an L2 radius r certifies the L∞ ball of radius r/√d.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats
from scipy.special import logsumexp


def clopper_pearson(k, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper–Pearson bounds at level α: (lower, upper), each holding with probability ≥ 1 − α."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    lower = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1e-12), n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1e-12)), 1.0)
    return lower, upper


def max_certifiable_pa(n: int, alpha: float) -> float:
    """The largest p_A lower bound n draws can give (all n votes for one class): α^(1/n)."""
    return alpha ** (1.0 / n)


def cohen_radius(pa_lower, sigma: float) -> np.ndarray:
    pa = np.asarray(pa_lower, float)
    with np.errstate(divide="ignore"):
        r = sigma * stats.norm.ppf(pa)
    return np.where(pa > 0.5, r, np.nan)


def cohen_two_class_radius(pa_lower, pb_upper, sigma: float) -> np.ndarray:
    pa, pb = np.asarray(pa_lower, float), np.asarray(pb_upper, float)
    r = sigma / 2 * (stats.norm.ppf(pa) - stats.norm.ppf(pb))
    return np.where(pa > pb, r, np.nan)


def _log_power_mean(log_a: float, log_b: float, t: float) -> float:
    """log of ((a^t + b^t)/2)^(1/t) from log a, log b, in log space (t < 0 here: a^t overflows otherwise)."""
    return (logsumexp([t * log_a, t * log_b]) - math.log(2)) / t


def _renyi_sq(pa: float, pb: float, sigma: float) -> float:
    if not pa > pb or pa <= 0:
        return math.nan
    pb = max(pb, 1e-300)
    la, lb = math.log(pa), math.log(pb)

    def neg(log_am1: float) -> float:  # α = 1 + exp(log_am1) > 1
        a = 1.0 + math.exp(log_am1)
        inner = 1 - pa - pb + 2 * math.exp(_log_power_mean(la, lb, 1 - a))
        if inner <= 0:
            return 0.0
        return 2 * sigma ** 2 / a * math.log(inner)  # the negative of the squared radius

    res = optimize.minimize_scalar(neg, bounds=(-12.0, 8.0), method="bounded", options={"xatol": 1e-6})
    best = max(-res.fun, max(-neg(v) for v in (-12.0, -6.0, 0.0, 4.0, 8.0)))
    return best


def renyi_radius(pa_lower, pb_upper, sigma: float) -> np.ndarray:
    """STN's Renyi-divergence L2 radius for Gaussian noise, maximised over the order α > 1 by 1-D optimisation
    (in log space: p_B^(1−α) overflows for large α)."""
    pa, pb = np.broadcast_arrays(np.asarray(pa_lower, float), np.asarray(pb_upper, float))
    out = np.array([_renyi_sq(a, b, sigma) for a, b in zip(pa.ravel(), pb.ravel())]).reshape(pa.shape)
    with np.errstate(invalid="ignore"):
        return np.where(out > 0, np.sqrt(np.maximum(out, 0)), np.nan)


def laplace_radius(pa_lower, pb_upper=None, scale: float = 1.0) -> np.ndarray:
    pa = np.asarray(pa_lower, float)
    if pb_upper is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = -scale * np.log(2 * (1 - pa))
        return np.where(pa > 0.5, r, np.nan)
    pb = np.asarray(pb_upper, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = -scale * np.log(1 - pa + pb)
    return np.where(pa > pb, r, np.nan)


def uniform_l1_radius(pa_lower, scale: float) -> np.ndarray:
    pa = np.asarray(pa_lower, float)
    return np.where(pa > 0.5, 2 * scale * (pa - 0.5), np.nan)


def pixeldp_radius(pa_lower, pb_upper, sigma: float) -> np.ndarray:
    """The largest L2 radius L for which PixelDP's Gaussian mechanism (σ = √(2 ln(1.25/δ))·L/ε, ε ≤ 1) gives
    ``p_A > e^{2ε}·p_B + (1 + e^ε)·δ``, maximised over δ on a grid and ε by bisection."""
    pa, pb = np.broadcast_arrays(np.asarray(pa_lower, float), np.asarray(pb_upper, float))
    deltas = np.logspace(-10, -1, 60)
    out = np.full(pa.shape, np.nan)
    for i, (a, b) in enumerate(zip(pa.ravel(), pb.ravel())):
        best = 0.0
        for d in deltas:
            def ok(e):
                return a > math.exp(2 * e) * b + (1 + math.exp(e)) * d

            if not ok(1e-12):
                continue
            lo, hi = 0.0, 1.0
            if ok(hi):
                lo = hi
            else:
                for _ in range(50):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if ok(mid) else (lo, mid)
            best = max(best, sigma * lo / math.sqrt(2 * math.log(1.25 / d)))
        out.ravel()[i] = best if best > 0 else np.nan
    return out


def linf_from_l2(radius, dim: int) -> np.ndarray:
    return np.asarray(radius, float) / math.sqrt(dim)
