"""Certification of classifiers over input sets: per-input verdicts, batched.

``certify(model, x, y, eps, method='ibp')`` returns, per input, whether the clean prediction is correct and
whether the bound proves ``f_y > f_j`` for all ``j ≠ y`` over the whole ball (a certificate is only claimed for
correctly classified inputs). Later domains (CROWN, MILP, the cascade) plug in through ``METHODS``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.specs import InputSet, LinearSpec, SpecError, ball, check_finite, margin_spec

# method name -> function(model, input_set, spec) -> lower bounds on the spec rows (B, K)
METHODS: dict[str, Callable[[nn.Module, InputSet, LinearSpec], torch.Tensor]] = {
    "ibp": lambda model, s, spec: interval_bounds(model, s, spec).lower,
    "crown": lambda model, s, spec: crown_bounds(model, s, spec).lower,
    "crown-ibp": lambda model, s, spec: crown_bounds(model, s, spec, intermediate="ibp").lower,
}


@dataclass
class Certificate:
    correct: torch.Tensor  # bool (B,): clean prediction is the label
    certified: torch.Tensor  # bool (B,): correct and proved robust over the set
    margin_lower: torch.Tensor  # (B,): lower bound on min_j f_y − f_j over the set


@torch.no_grad()
def certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    norm: str | float = "inf",
    domain: tuple[float, float] | None = (0.0, 1.0),
    num_classes: int | None = None,
    float64_check: bool = False,
) -> Certificate:
    """Certify ``model`` on a batch ``(x, y)`` for the ``norm`` ball of radius ``eps``.

    With ``float64_check``, inputs certified in the model's dtype are certified again on a float64 copy of the
    model, and only inputs that pass both keep the verdict (guards against float32 round-off at tiny margins).
    """
    if method not in METHODS:
        raise ValueError(f"unknown certification method {method!r}; available: {', '.join(METHODS)}")
    check_finite(x)
    if y.shape != (x.shape[0],):
        raise SpecError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    try:
        logits = model(x)
    except RuntimeError as e:
        raise SpecError(f"inputs of shape {tuple(x.shape)} do not fit the model: {e}") from e
    k = num_classes or logits.shape[1]
    spec = margin_spec(y, k, logits.dtype)
    lower = METHODS[method](model, ball(norm, x, eps, domain), spec)
    margin = lower.min(1).values.nan_to_num(nan=-torch.inf)  # overflowing bounds prove nothing
    correct = logits.argmax(1) == y
    certified = correct & (margin > 0)
    if float64_check and certified.any() and x.dtype != torch.float64:
        model64 = copy.deepcopy(model).double()
        e = torch.as_tensor(eps, dtype=torch.float64)
        e = e[certified] if e.dim() > 0 else e
        again = certify(model64, x[certified].double(), y[certified], e, method, norm, domain, k)
        certified = certified.clone()
        certified[certified.clone()] = again.certified
    return Certificate(correct, certified, margin)


def certify_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: list[float],
    method: str = "ibp",
    norm: str = "inf",
    pgd_steps: int = 0,
    pgd_restarts: int = 1,
    batch_size: int = 256,
    indices: list[int] | None = None,
    writer=None,
    progress: bool = False,
    float64_check: bool = False,
) -> list[dict]:
    """Per-input rows ``{key, idx, eps, label, pred, correct, pgd_robust, certified, margin_lb, time_s}``.

    With a :class:`~certkit.io.ResultsWriter`, rows are written per batch and rows already in it are skipped,
    so a killed run resumes where it stopped. A certified input that PGD breaks is a soundness bug: it raises.
    """
    import time

    from tqdm.auto import tqdm

    from certkit.attacks.pgd import pgd

    device = next(model.parameters()).device
    idx_all = list(range(len(y))) if indices is None else list(indices)
    done = writer.done if writer is not None else set()
    rows: list[dict] = []
    jobs = [(e, i) for e in eps_list for i in range(0, len(y), batch_size)]
    for eps, start in tqdm(jobs, desc=f"certify ({method})", disable=not progress):
        ids = idx_all[start:start + batch_size]
        keep = [k for k, i in enumerate(ids) if f"{eps}:{i}" not in done]
        if not keep:
            continue
        sel = torch.tensor([start + k for k in keep])
        xb, yb = x[sel].to(device), y[sel].to(device)
        t0 = time.time()
        cert = certify(model, xb, yb, eps, method, norm, float64_check=float64_check)
        t_cert = (time.time() - t0) / len(sel)
        robust = None
        if pgd_steps > 0:
            res = pgd(model, xb, yb, eps, norm, steps=pgd_steps, restarts=pgd_restarts) if eps > 0 else None
            robust = cert.correct if res is None else ~res.success
            if (cert.certified & ~robust).any():
                bad = [ids[keep[k]] for k in (cert.certified & ~robust).nonzero().flatten().tolist()]
                raise AssertionError(f"unsound certificate: inputs {bad} certified at eps={eps} but broken by PGD")
        with torch.no_grad():
            pred = model(xb).argmax(1)
        cols = zip(yb.tolist(), pred.tolist(), cert.correct.tolist(), cert.certified.tolist(),
                   cert.margin_lower.tolist(), (robust if robust is not None else cert.correct).tolist())
        batch_rows = []
        for k, (label, p, ok, cert_ok, margin, rob) in enumerate(cols):
            i = ids[keep[k]]
            row = {"key": f"{eps}:{i}", "idx": i, "eps": eps, "label": label, "pred": p, "correct": ok,
                   "certified": cert_ok, "margin_lb": margin, "method": method, "time_s": round(t_cert, 6)}
            if robust is not None:
                row["pgd_robust"] = rob
            batch_rows.append(row)
        if writer is not None:
            writer.write(batch_rows)
        rows += batch_rows
    return writer.results if writer is not None else rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per radius: number of inputs, clean / PGD / certified accuracy."""
    out = []
    for eps in sorted({r["eps"] for r in rows}):
        rs = [r for r in rows if r["eps"] == eps]
        row = {"eps": eps, "n": len(rs), "clean": sum(r["correct"] for r in rs) / len(rs)}
        if all("pgd_robust" in r for r in rs):
            row["pgd"] = sum(r["pgd_robust"] for r in rs) / len(rs)
        row["certified"] = sum(r["certified"] for r in rs) / len(rs)
        out.append(row)
    return out
