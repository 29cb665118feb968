"""Certification of the posterior predictive of a Bayesian neural network (Wicker et al. 2021, Theorem 1).

The predictor is the empirical mean over a fixed set of N weight samples, ``p(x) = (1/N)·Σ_i softmax f_{w_i}(x)``.
Per sample, bounds on the pairwise logit margins ``f_j − f_k`` over the input set (IBP or CROWN, the margins
folded into the last layer) give

    softmax_j ≥ 1 / (1 + Σ_{k≠j} exp(−L_jk)),   softmax_j ≤ 1 / (1 + Σ_{k≠j} exp(L_kj)),

with L_jk a lower bound of f_j − f_k (each class's upper bound uses its *own* worst case). The predictive is
certified at x with label y iff ``mean_i lower_y(w_i) > max_{j≠y} mean_i upper_j(w_i)``: then p_y(x') > p_j(x')
for every x' in the set and every j, for any number of classes. (Averaging the label's worst-case softmax
vectors and taking their argmax is not sound beyond two classes: :func:`naive_certify` exists for the test
that shows it.) The certificate is about the saved samples; :func:`hoeffding_confidence` states how far it
carries over to a predictor that re-samples the posterior (their Remark 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.specs import InputSet, LinearSpec, ball


def pairwise_spec(batch: int, k: int, dtype=torch.float32, device=None) -> tuple[LinearSpec, torch.Tensor]:
    """Rows f_j − f_k for all ordered pairs j ≠ k: (spec, pairs (K(K−1), 2))."""
    pairs = torch.tensor([(j, m) for j in range(k) for m in range(k) if j != m], device=device)
    C = torch.zeros(len(pairs), k, dtype=dtype, device=device)
    C[torch.arange(len(pairs)), pairs[:, 0]] = 1
    C[torch.arange(len(pairs)), pairs[:, 1]] = -1
    return LinearSpec(C.unsqueeze(0).expand(batch, -1, -1)), pairs


def softmax_bounds(model: nn.Module, input_set: InputSet, num_classes: int, method: str = "ibp"):
    """Lower and upper bounds (B, K) on every softmax output of ``model`` over the input set. ``'crown'`` (the
    paper's LBP) keeps, per margin, the better of the CROWN and the IBP bound: both are sound, and on IBP-trained
    networks CROWN's last-layer relaxation is often the looser of the two."""
    B = input_set.batch_size
    spec, pairs = pairwise_spec(B, num_classes, input_set.x.dtype, input_set.x.device)
    if method == "ibp":
        L = interval_bounds(model, input_set, spec).lower
    elif method in ("crown", "lbp"):
        L = torch.maximum(crown_bounds(model, input_set, spec).lower, interval_bounds(model, input_set, spec).lower)
    else:
        raise ValueError(f"unknown method {method!r}; use 'ibp' or 'crown' (the paper's LBP)")
    L = L.nan_to_num(nan=-math.inf)
    full = torch.full((B, num_classes, num_classes), math.inf, dtype=L.dtype, device=L.device)
    full[:, pairs[:, 0], pairs[:, 1]] = L  # full[b, j, k] = lower bound of f_j − f_k (inf on the diagonal)
    off = ~torch.eye(num_classes, dtype=torch.bool, device=L.device)
    lower = 1 / (1 + torch.where(off, torch.exp(-full), torch.zeros_like(full)).sum(2))
    upper = 1 / (1 + torch.where(off, torch.exp(full.transpose(1, 2)), torch.zeros_like(full)).sum(2))
    return lower, upper


@dataclass
class PosteriorCertificate:
    certified: torch.Tensor  # bool (B,)
    lower_y: torch.Tensor  # mean_i lower bound of softmax_y
    upper_other: torch.Tensor  # max_{j≠y} mean_i upper bound of softmax_j
    lower: torch.Tensor  # (B, K) mean lower bounds
    upper: torch.Tensor  # (B, K) mean upper bounds

    @property
    def margin(self) -> torch.Tensor:
        return self.lower_y - self.upper_other


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
                      domain: tuple[float, float] | None = (0.0, 1.0), num_classes: int | None = None
                      ) -> PosteriorCertificate:
    """Theorem 1 of Wicker et al. over the ``norm`` ball of radius eps (module docstring)."""
    k = num_classes or model(x[:1]).shape[1]
    s = ball(norm, x, eps, domain)
    lo = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)
    up = torch.zeros_like(lo)
    for sample in samples:
        lo_i, up_i = _with(model, sample, softmax_bounds, s, k, method)
        lo += lo_i / len(samples)
        up += up_i / len(samples)
    lower_y = lo.gather(1, y[:, None]).squeeze(1)
    upper_other = up.scatter(1, y[:, None], -math.inf).amax(1)
    return PosteriorCertificate(lower_y > upper_other, lower_y, upper_other, lo, up)


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


def hoeffding_confidence(margin: float | torch.Tensor, n_samples: int, num_classes: int) -> torch.Tensor:
    """Confidence that the certificate also holds for the posterior's expected predictor: the K class bounds'
    sample means are each within t = margin/2 of their expectations with probability ≥ 1 − 2K·exp(−2N t²)
    (Hoeffding, union bound; softmax bounds lie in [0, 1])."""
    m = torch.as_tensor(margin, dtype=torch.float64)
    return (1 - 2 * num_classes * torch.exp(-2 * n_samples * (m.clamp(min=0) / 2) ** 2)).clamp(min=0)


def max_radius_posterior(model, samples, x, y, method: str = "ibp", hi: float = 0.5, tol: float = 1e-3,
                         norm: str = "inf", domain=(0.0, 1.0)) -> torch.Tensor:
    """The largest certified radius per input by bisection on ε (their Fig. 2)."""
    lo_e = torch.zeros(len(y), dtype=torch.float64)
    hi_e = torch.full((len(y),), float(hi), dtype=torch.float64)
    top = certify_posterior(model, samples, x, y, hi, method, norm, domain).certified.cpu()
    lo_e[top] = hi
    correct = (predictive(model, samples, x).argmax(1) == y).cpu()
    todo = correct & ~top
    while todo.any() and (hi_e - lo_e)[todo].max() > tol:
        idx = todo.nonzero().squeeze(1)
        mid = (lo_e[idx] + hi_e[idx]) / 2
        ok = certify_posterior(model, samples, x[idx], y[idx], mid.to(x), method, norm, domain).certified.cpu()
        lo_e[idx[ok]], hi_e[idx[~ok]] = mid[ok], mid[~ok]
        todo = todo & ((hi_e - lo_e) > tol)
    return lo_e
