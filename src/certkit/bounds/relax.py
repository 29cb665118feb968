"""Linear relaxations of activations, shared by the bound domains.

* :func:`relu_relaxation`: CROWN's ReLU bounds ``sl·z ≤ relu(z) ≤ su·z + bu`` over ``[l, u]`` (also the MILP's
  triangle and branch and bound's split scores).
* :func:`relu_band`: ``relu(z) − λz ∈ [0, β]`` for a slope λ (DeepZ, COLT's learned slopes, Cauchy estimates,
  latent points).
* Both take a ``negative_slope`` a in [0, 1] for LeakyReLU, ``max(z, a·z) = a·z + (1 − a)·relu(z)``: its
  relaxations are ReLU's scaled by ``1 − a`` plus the exact linear part ``a·z``.
* :func:`sshape_relaxation`: parallel bounds ``λz + bl ≤ f(z) ≤ λz + bu`` for Sigmoid and Tanh.

Float policy (see docs/soundness.md): the S-shaped relaxation is derived in float64 from closed forms that do
not cancel for any interval (``1 − λ`` is never formed), the slope is rounded to the model's dtype first and the
intercepts are then computed for that rounded slope, padded and rounded outwards. Any slope gives a sound band
as long as its intercepts are the exact range of ``f(z) − λz``; that range is what is computed here.
"""

from __future__ import annotations

import torch

from certkit.bounds.interval import Bounds


def _chord(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unstable mask, active mask, chord slope u/(u − l) on unstable neurons and the exact slope elsewhere)."""
    active, unstable = l >= 0, (l < 0) & (u > 0)
    return unstable, active, torch.where(unstable, u / (u - l).clamp_min(1e-30), active.to(l.dtype))


def relu_relaxation(b: Bounds, negative_slope: float = 0.0,
                    alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower slope, upper slope, upper intercept) of ReLU (or LeakyReLU with ``negative_slope``) over [l, u],
    elementwise: the chord above unstable neurons, below them the adaptive lower slope (1 if ``u > −l`` else 0)
    or ``alpha`` (α-CROWN's optimised slopes of the ReLU part, in [0, 1], broadcastable to the bounds; they
    replace the default on unstable neurons only), exact on stable ones."""
    l, u = b.lower, b.upper
    unstable, active, su = _chord(l, u)
    bu = torch.where(unstable, -su * l, torch.zeros_like(l))
    sl = torch.where(unstable, (u > -l).to(l.dtype), active.to(l.dtype))
    if alpha is not None:
        sl = torch.where(unstable, alpha, sl)
    a = negative_slope
    if a:
        sl, su, bu = a + (1 - a) * sl, a + (1 - a) * su, (1 - a) * bu
    return sl, su, bu


def relu_band(b: Bounds, slope: torch.Tensor | None = None,
              negative_slope: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(λ, β, unstable) with ``0 ≤ f(z) − λz ≤ β`` on [l, u] for f = ReLU (or LeakyReLU with ``negative_slope``
    a): on unstable neurons the ReLU part's slope is ``slope`` (clamped to [0, 1]; default the chord, DeepZ's
    minimal-area choice) with β = max(−λl, (1 − λ)u); stable neurons are exact (β = 0). For LeakyReLU, λ and β
    become ``a + (1 − a)λ`` and ``(1 − a)β``."""
    l, u = b.lower, b.upper
    unstable, active, lam = _chord(l, u)
    if slope is not None:
        lam = torch.where(unstable, slope.to(l).clamp(0, 1).expand_as(l), lam)
    beta = torch.where(unstable, torch.maximum(-lam * l, (1 - lam) * u), torch.zeros_like(l))
    a = negative_slope
    if a:
        lam, beta = a + (1 - a) * lam, (1 - a) * beta
    return lam, beta, unstable


def _sigmoid_band(l: torch.Tensor, u: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Slope (exactly representable in ``dtype``) and the float64 range [hl, hu] of σ(z) − λz over [l, u]."""
    finite = torch.isfinite(l) & torch.isfinite(u)
    width = u - l
    # chord slope without cancellation: for l > 0 use σ(−l) − σ(−u) (both ends near 1 otherwise round together)
    rise = torch.where(l > 0, torch.sigmoid(-l) - torch.sigmoid(-u), torch.sigmoid(u) - torch.sigmoid(l))
    slope_l = torch.sigmoid(l) * torch.sigmoid(-l)  # σ'(l), no 1 − σ
    lam = torch.where(width > 1e-9 * (1 + l.abs()), rise / width.clamp_min(1e-300), slope_l)
    lam = torch.where(finite, lam.clamp(0, 0.25), torch.zeros_like(lam))
    lam = lam.to(dtype).to(torch.float64)  # the slope the bound will use; intercepts are computed for it
    # σ(z)(1 − σ(z)) = λ at σ(z) = s or 1 − s, s = (1 − √(1 − 4λ))/2 = 2λ/(1 + √(1 − 4λ)) (no cancellation)
    s = (2 * lam / (1 + torch.sqrt((1 - 4 * lam).clamp(min=0)))).clamp(max=0.5)
    z_star = torch.log(s) - torch.log1p(-s)  # ≤ 0 (−inf when λ = 0: f − λz is monotone, the ends decide)
    cands = torch.stack([l, u, z_star.clamp(l, u), (-z_star).clamp(l, u)])
    lin = torch.where(lam == 0, torch.zeros_like(cands), lam * cands)  # 0·(±inf) is 0 here, not NaN
    h = torch.sigmoid(cands) - lin
    return lam, h.amin(0), h.amax(0)


def _round_out(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 [lo, hi] padded for float64 round-off and rounded outwards to ``dtype``."""
    pad = 1e-12 * (1 + torch.maximum(lo.abs(), hi.abs()))
    lo, hi = lo - pad, hi + pad
    lo_d, hi_d = lo.to(dtype), hi.to(dtype)
    inf = torch.tensor(float("inf"), dtype=dtype, device=lo.device)
    lo_d = torch.where(lo_d.double() > lo, torch.nextafter(lo_d, -inf), lo_d)
    hi_d = torch.where(hi_d.double() < hi, torch.nextafter(hi_d, inf), hi_d)
    return lo_d, hi_d


def sshape_relaxation(tanh: bool, b: Bounds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parallel linear bounds ``λz + bl ≤ f(z) ≤ λz + bu`` of Sigmoid (``tanh=False``) or Tanh over [l, u].

    λ is the chord's slope; ``f(z) − λz`` is extremal on [l, u] at an end point or where ``f'(z) = λ``, so its
    exact range gives the intercepts: the chord on one side and the parallel tangent on the other where f is
    convex or concave, a sound band where ``l < 0 < u``. Tanh is Sigmoid rescaled: ``tanh(z) = 2σ(2z) − 1``.
    Sound for any interval, including very wide and infinite ones (slope 0, intercepts f(l) and f(u)).
    Returns (λ, bl, λ, bu) in the dtype of the bounds.
    """
    dtype = b.lower.dtype
    l, u = b.lower.double(), b.upper.double()
    if tanh:
        lam2, hl, hu = _sigmoid_band(2 * l, 2 * u, dtype)  # σ(w) − λ₂w with w = 2z
        # tanh(z) − 4λ₂·z = 2(σ(2z) − λ₂·2z) − 1; 4λ₂ is exact in dtype when λ₂ is (a power-of-two scaling)
        lam, hl, hu = 4 * lam2, 2 * hl - 1, 2 * hu - 1
    else:
        lam, hl, hu = _sigmoid_band(l, u, dtype)
    bl, bu = _round_out(hl, hu, dtype)
    lam = lam.to(dtype)
    return lam, bl, lam, bu
