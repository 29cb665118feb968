"""Certification of the posterior predictive of a Bayesian neural network (Wicker et al. 2021, Theorem 1).

The predictor is the empirical mean over a fixed set of N weight samples, ``p(x) = (1/N)·Σ_i softmax f_{w_i}(x)``.
Per sample, bounds L_jk ≤ f_j − f_k on the pairwise logit margins over the input set (IBP or CROWN, the margins
folded into the last layer) bound every softmax output,

    softmax_j ≥ 1 / (1 + Σ_{k≠j} exp(−L_jk)),   softmax_j ≤ 1 / (1 + Σ_{k≠j} exp(L_kj)).

Two sound decision rules, for any number of classes:

* ``rule='theorem1'`` (the paper's): certified iff ``mean_i lower_y(w_i) > max_{j≠y} mean_i upper_j(w_i)``.
* ``rule='pairwise'`` (default, never weaker): certified iff ``mean_i D_yj(w_i) > 0`` for every j ≠ y, where
  D_yj is the exact minimum of ``softmax_y − softmax_j`` over the box of margins d_k = f_y − f_k ∈ [L_yk, −L_ky]:
  ``softmax_y − softmax_j = (1 − e^{−d_j}) / (1 + Σ_{k≠y} e^{−d_k})`` is smallest at d_j = L_yj and, for the
  other k, at the end of their interval that makes the denominator largest (numerator ≥ 0) or smallest (< 0),
  or Theorem 1's per-sample ``lower_y − upper_j`` where that is larger (it also uses the margins between the
  other classes). Then ``min_x' (p_y − p_j) ≥ mean_i min_x' (softmax_y − softmax_j)(w_i) ≥ mean_i D_yj(w_i)``,
  and every certificate of Theorem 1 is kept. For one sample (a deterministic network) it is the usual margin
  certificate L_yj > 0.

(Averaging the label's worst-case softmax vectors and taking their argmax is not sound beyond two classes:
:func:`naive_certify` exists for the test that shows it.) The certificate is about the saved samples;
:func:`hoeffding_confidence` states how far it carries over to a predictor that re-samples the posterior (their
Remark 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.specs import InputSet, LinearSpec, ball
from certkit.verify.certify import bisect_radius


def pairwise_spec(batch: int, k: int, dtype=torch.float32, device=None) -> tuple[LinearSpec, torch.Tensor]:
    """Rows f_j − f_k for all ordered pairs j ≠ k: (spec, pairs (K(K−1), 2))."""
    pairs = torch.tensor([(j, m) for j in range(k) for m in range(k) if j != m], device=device)
    C = torch.zeros(len(pairs), k, dtype=dtype, device=device)
    C[torch.arange(len(pairs)), pairs[:, 0]] = 1
    C[torch.arange(len(pairs)), pairs[:, 1]] = -1
    return LinearSpec(C.unsqueeze(0).expand(batch, -1, -1)), pairs


def margin_bounds(model: nn.Module, input_set: InputSet, num_classes: int, method: str = "ibp") -> torch.Tensor:
    """(B, K, K) lower bounds ``L[b, j, k] ≤ f_j − f_k`` over the input set (+inf on the diagonal). ``'crown'``
    (the paper's LBP) keeps, per margin, the better of the CROWN and the IBP bound: both are sound, and on
    IBP-trained networks CROWN's last-layer relaxation is often the looser of the two."""
    B = input_set.batch_size
    spec, pairs = pairwise_spec(B, num_classes, input_set.x.dtype, input_set.x.device)
    if method == "ibp":
        L = interval_bounds(model, input_set, spec).lower
    elif method in ("crown", "lbp"):
        L = torch.maximum(crown_bounds(model, input_set, spec).lower, interval_bounds(model, input_set, spec).lower)
    else:
        raise ValueError(f"unknown method {method!r}; use 'ibp' or 'crown' (the paper's LBP)")
    full = torch.full((B, num_classes, num_classes), math.inf, dtype=L.dtype, device=L.device)
    full[:, pairs[:, 0], pairs[:, 1]] = L.nan_to_num(nan=-math.inf)
    return full


def softmax_from_margins(full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (B, K) on every softmax output from the margin bounds of :func:`margin_bounds`."""
    off = ~torch.eye(full.shape[1], dtype=torch.bool, device=full.device)
    lower = 1 / (1 + torch.where(off, torch.exp(-full), torch.zeros_like(full)).sum(2))
    upper = 1 / (1 + torch.where(off, torch.exp(full.transpose(1, 2)), torch.zeros_like(full)).sum(2))
    return lower, upper


def softmax_bounds(model: nn.Module, input_set: InputSet, num_classes: int, method: str = "ibp"):
    """Lower and upper bounds (B, K) on every softmax output of ``model`` over the input set."""
    return softmax_from_margins(margin_bounds(model, input_set, num_classes, method))


def pairwise_gap(full: torch.Tensor, y: torch.Tensor,
                 softmax: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, K): D_yj, a lower bound of ``softmax_y − softmax_j`` over the set from the margin bounds ``full`` of
    one network (module docstring; +inf at j = y). ``softmax``: :func:`softmax_from_margins` of ``full`` when the
    caller has it already."""
    dtype, full = full.dtype, full.double()  # e^{−d} of large margins overflows float32
    rows = torch.arange(len(y), device=y.device)
    lo = full[rows, y]  # lower bounds of d_k = f_y − f_k
    hi = -full[rows, :, y]  # upper bounds of d_k
    e_lo, e_hi = torch.exp(-lo), torch.exp(-hi)  # e^{−d_k} at its largest and at its smallest
    e_lo[rows, y] = 0
    e_hi[rows, y] = 0
    num = 1 - e_lo  # numerator at d_j = L_yj
    big = num / (1 + e_lo.sum(1, keepdim=True))  # others at their largest e^{−d_k}: the case num ≥ 0
    small = num / (1 + e_lo + e_hi.sum(1, keepdim=True) - e_hi)  # others at their smallest: num < 0
    gap = torch.where(num >= 0, big, small).nan_to_num(nan=-1.0)  # inf/inf (unbounded margins): the worst value
    lower, upper = softmax or softmax_from_margins(full)  # Theorem 1's also uses the margins between other classes
    gap = torch.maximum(gap, lower.gather(1, y[:, None]) - upper)
    gap[rows, y] = math.inf
    return gap.to(dtype)


@dataclass
class PosteriorCertificate:
    certified: torch.Tensor  # bool (B,)
    margin: torch.Tensor  # (B,) certified iff > 0: min_j mean_i D_yj ('pairwise'), mean lower_y − max_j mean upper_j
    lower: torch.Tensor  # (B, K) mean_i lower bounds of the softmax outputs
    upper: torch.Tensor  # (B, K) mean_i upper bounds
    theorem1_margin: torch.Tensor  # (B,) Theorem 1's margin, whatever the rule (for comparisons)
    rule: str = "pairwise"


class _Apply(nn.Module):
    """Runs ``fn(model, *args)`` inside ``functional_call``, so that a weight sample is swapped into the model
    (the graph's ops read the live parameters) without copying the model."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def _with(model: nn.Module, sample: dict[str, torch.Tensor], fn, *args):
    """``fn(model with the weights of sample, *args)``."""
    from torch.func import functional_call

    return functional_call(_Apply(model, fn), {f"model.{k}": v for k, v in sample.items()}, args)


@torch.no_grad()
def predictive(model: nn.Module, samples: list[dict[str, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """The empirical posterior predictive: mean softmax over the weight samples (B, K)."""
    return torch.stack([torch.softmax(_with(model, s, lambda m, z: m(z), x), 1) for s in samples]).mean(0)


@torch.no_grad()
def certify_posterior(model: nn.Module, samples: list[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                      eps: float | torch.Tensor, method: str = "ibp", norm: str = "inf",
                      domain: tuple[float, float] | None = (0.0, 1.0), num_classes: int | None = None,
                      rule: str = "pairwise") -> PosteriorCertificate:
    """Certifies the predictive over the ``norm`` ball of radius eps with ``rule`` 'pairwise' or 'theorem1'
    (module docstring)."""
    if rule not in ("pairwise", "theorem1"):
        raise ValueError(f"rule must be 'pairwise' or 'theorem1', got {rule!r}")
    k = num_classes or model(x[:1]).shape[1]
    s = ball(norm, x, eps, domain)
    lo = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)
    up = torch.zeros_like(lo)
    gap = torch.zeros_like(lo)
    for sample in samples:
        full = _with(model, sample, margin_bounds, s, k, method)
        lo_i, up_i = softmax_from_margins(full.double())
        lo += lo_i.to(lo.dtype) / len(samples)
        up += up_i.to(up.dtype) / len(samples)
        gap += pairwise_gap(full, y, (lo_i, up_i)) / len(samples)
    theorem1 = lo.gather(1, y[:, None]).squeeze(1) - up.scatter(1, y[:, None], -math.inf).amax(1)
    margin = gap.amin(1) if rule == "pairwise" else theorem1
    return PosteriorCertificate(margin > 0, margin, lo, up, theorem1, rule)


@torch.no_grad()
def naive_certify(model: nn.Module, samples: list[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                  eps: float, domain=(0.0, 1.0)) -> torch.Tensor:
    """NOT SOUND for more than two classes (kept for the test that shows it): average, over samples, the softmax
    of the label's worst-case logits (y at its lower, every other class at its upper bound) and take the argmax."""
    s = ball("inf", x, eps, domain)
    acc = 0
    for sample in samples:
        b = _with(model, sample, interval_bounds, s)
        worst = b.upper.scatter(1, y[:, None], b.lower.gather(1, y[:, None]))
        acc = acc + torch.softmax(worst, 1) / len(samples)
    return acc.argmax(1) == y


def hoeffding_confidence(margin: float | torch.Tensor, n_samples: int, num_classes: int,
                         rule: str = "pairwise") -> torch.Tensor:
    """Confidence that the certificate also holds for the posterior's expected predictor (their Remark 2), by
    Hoeffding's inequality and a union bound. 'pairwise': the K − 1 gap means (values in [−1, 1]) are each within
    t = margin of their expectations with probability ≥ 1 − 2(K−1)·exp(−N t²/2); 'theorem1': the K class bounds'
    means (values in [0, 1]) within t = margin/2, probability ≥ 1 − 2K·exp(−2N t²)."""
    if rule not in ("pairwise", "theorem1"):
        raise ValueError(f"rule must be 'pairwise' or 'theorem1', got {rule!r}")
    m = torch.as_tensor(margin, dtype=torch.float64).clamp(min=0)
    if rule == "pairwise":
        return (1 - 2 * (num_classes - 1) * torch.exp(-n_samples * m ** 2 / 2)).clamp(min=0)
    return (1 - 2 * num_classes * torch.exp(-2 * n_samples * (m / 2) ** 2)).clamp(min=0)


def max_radius_posterior(model, samples, x, y, method: str = "ibp", hi: float = 0.5, tol: float = 1e-3,
                         norm: str = "inf", domain=(0.0, 1.0), rule: str = "pairwise") -> torch.Tensor:
    """The largest certified radius per input by bisection on ε (their Fig. 2; :func:`~certkit.verify.certify.
    bisect_radius`)."""

    def certified(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return certify_posterior(model, samples, x[idx.to(x.device)], y[idx.to(y.device)], eps.to(x), method, norm,
                                 domain, rule=rule).certified.cpu()

    return bisect_radius(certified, (predictive(model, samples, x).argmax(1) == y).cpu(), hi, tol)
