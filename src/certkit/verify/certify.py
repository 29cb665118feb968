"""Certification of classifiers over input sets: per-input verdicts, batched.

``certify(model, x, y, eps, method='ibp')`` returns, per input, whether the clean prediction is correct and
whether the bound proves ``f_y > f_j`` for all ``j ≠ y`` over the whole ball (a certificate is only claimed for
correctly classified inputs). Methods: ``ibp``, ``crown``, ``crown-ibp``, ``alpha`` (α-CROWN) — bounds — and
``bab`` (branch and bound with β-CROWN), ``milp`` (exact, HiGHS) and ``cascade`` — the verification cascade of
:mod:`certkit.verify.cascade` with one complete stage, or all stages. :func:`max_radius` bisects on ε for any
method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from certkit import graph as g
from certkit.nn import float64_copy
from certkit.specs import SpecError, ball, check_finite, margin_spec
from certkit.verify.bab import SUPPORTED_OPS
from certkit.verify.cascade import METHODS, STAGES, activation_splits, piecewise_linear, verify_property

COMPLETE = ("bab", "milp", "cascade")  # methods that run the cascade (one stage, or all)
SUPPORTED_NAMES = g.supported_ops(dict.fromkeys(SUPPORTED_OPS))


@dataclass
class Certificate:
    correct: torch.Tensor  # bool (B,): clean prediction is the label
    certified: torch.Tensor  # bool (B,): correct and proved robust over the set
    margin_lower: torch.Tensor  # (B,): lower bound on min_j f_y − f_j over the set
    verdicts: list | None = None  # the cascade's per-input Verdicts (stage, times, counterexample)


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
    **options,
) -> Certificate:
    """Certify ``model`` on a batch ``(x, y)`` for the ``norm`` ball of radius ``eps``.

    ``options`` go to the method: ``iterations`` (α-CROWN's steps: alpha, and the cascade's α stage),
    ``timeout`` (seconds per input), ``max_binaries`` (MILP) and the other arguments of
    :func:`~certkit.verify.cascade.verify_property` (bab, milp, cascade; ``bab`` and ``milp`` are the cascade
    with that one stage, and their per-input :class:`Verdict` objects are returned too).
    With ``float64_check``, inputs certified in the model's dtype are certified again on a float64 copy of the
    model, and only inputs that pass both keep the verdict (guards against float32 round-off at tiny margins).
    """
    if method not in METHODS and method not in COMPLETE:
        raise ValueError(f"unknown certification method {method!r}; available: {', '.join((*METHODS, *COMPLETE))}")
    check_finite(x)
    if y.shape != (x.shape[0],):
        raise SpecError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if torch.is_floating_point(y) or y.dtype == torch.bool:
        raise SpecError(f"labels must be an integer tensor (class indices), got dtype {y.dtype}")
    try:
        logits = model(x)
    except RuntimeError as e:
        raise SpecError(f"inputs of shape {tuple(x.shape)} do not fit the model: {e}") from e
    k = num_classes or logits.shape[1]
    spec = margin_spec(y, k, logits.dtype)
    correct = logits.argmax(1) == y
    s = ball(norm, x, eps, domain)
    verdicts = None
    if method in COMPLETE:
        opts = dict(options)
        if "iterations" in opts:
            opts["alpha_iterations"] = opts.pop("iterations")
        if method != "cascade":
            if not s.is_box:
                raise SpecError(f"method {method!r} splits boxes: it takes L∞ balls, not the L{s.p:g} ball")
            # Sigmoid/Tanh networks: branch and bound splits their activation intervals instead
            if not piecewise_linear(model) and not (method == "bab" and activation_splits(model)):
                ops = sorted({repr(n.op) for n in g.to_graph(model).nodes if not isinstance(n.op, SUPPORTED_OPS)})
                raise g.UnsupportedOpError(f"method {method!r} encodes piecewise-linear networks ("
                                           f"{', '.join(SUPPORTED_NAMES)}); this one has {', '.join(ops)}")
            opts["stages"] = (method,)
        verdicts = verify_property(model, s, spec, **opts)
        lower = torch.stack([v.lower for v in verdicts])
        verified = torch.tensor([v.verdict == "verified" for v in verdicts], device=x.device)
    else:
        lower = METHODS[method](model, s, spec, **options)
        verified = torch.ones_like(correct)
    margin = lower.min(1).values.nan_to_num(nan=-torch.inf)  # overflowing bounds prove nothing
    certified = correct & (margin > 0) & verified
    if float64_check and certified.any() and x.dtype != torch.float64:
        model64 = float64_copy(model)
        e = torch.as_tensor(eps, dtype=torch.float64)
        e = e[certified] if e.dim() > 0 else e
        quiet = {o: v for o, v in options.items() if o != "progress"}  # the re-check finishes no new input
        again = certify(model64, x[certified].double(), y[certified], e, method, norm, domain, k, **quiet)
        certified = certified.clone()
        certified[certified.clone()] = again.certified
    return Certificate(correct, certified, margin, verdicts)


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
    executor=None,
    **options,
) -> list[dict]:
    """Per-input rows ``{key, idx, eps, label, pred, correct, pgd_robust, certified, margin_lb, time_s}``, and
    for the cascade ``verdict``, ``stage`` and ``seconds`` per stage. ``options`` go to :func:`certify`.

    With a :class:`~certkit.io.ResultsWriter`, rows are written per batch and rows already in it are skipped,
    so a killed run resumes where it stopped. A certified input that PGD breaks is a soundness bug: it raises
    :class:`~certkit.parallel.UnsoundError`. An :class:`~certkit.parallel.Executor` with workers certifies the
    batches (``batch_size`` inputs: one task each) on Ray; an input whose task raises there becomes a row with an
    ``error`` field.
    """
    from tqdm.auto import tqdm

    from certkit.parallel import Executor, Shard

    executor = executor or Executor()
    device = next(model.parameters()).device
    idx_all = list(range(len(y))) if indices is None else list(indices)
    done = writer.done if writer is not None else set()
    rows: list[dict] = []
    bar = tqdm(total=len(eps_list) * len(y), desc=f"certify ({method})", unit="input", disable=not progress)
    if method in COMPLETE and not executor.distributed:  # the cascade reports every input it finishes
        options = {**options, "progress": bar.update}
    args = {"method": method, "norm": norm, "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
            "float64_check": float64_check, "device": str(device), "options": options}
    work = []
    for eps in eps_list:
        for start in range(0, len(y), batch_size):
            keep = [k for k in range(start, min(start + batch_size, len(y))) if f"{eps}:{idx_all[k]}" not in done]
            bar.update(min(batch_size, len(y) - start) - len(keep))  # already in the results file
            if keep:
                work.append(Shard(keep, {"eps": eps, **args}))
    shared = {"model": model, "x": x, "y": y, "ids": idx_all}
    if executor.distributed:  # what travels to the workers: the model on the CPU, the data
        shared["model"] = copy.deepcopy(model).cpu()
    def error_row(k: int, args: dict, message: str) -> dict:  # an input whose task raised on a worker
        return {"key": f"{args['eps']}:{idx_all[k]}", "idx": idx_all[k], "eps": args["eps"], "label": int(y[k]),
                "method": method, "error": message}

    for shard, batch_rows in executor.map(certify_shard, shared, work, error_row):
        if writer is not None:
            writer.write(batch_rows)
        rows += batch_rows
        if method not in COMPLETE or executor.distributed:
            bar.update(len(shard.items))
    bar.close()
    return writer.results if writer is not None else rows


def certify_shard(shared: dict, items: list[int], eps: float, method: str, norm: str, pgd_steps: int,
                  pgd_restarts: int, float64_check: bool, device: str, options: dict) -> list[dict]:
    """The rows of :func:`certify_dataset` for the inputs at positions ``items`` of ``shared['x']`` (one
    batch; the task function of :class:`~certkit.parallel.Executor`)."""
    import time

    from certkit.attacks.pgd import pgd
    from certkit.parallel import UnsoundError, seeded

    model, ids = shared["model"], shared["ids"]
    if next(model.parameters()).device != torch.device(device):
        model = shared["model"] = model.to(device)
    sel = torch.tensor(items)
    xb, yb = shared["x"][sel].to(device), shared["y"][sel].to(device)
    with seeded(eps, [ids[k] for k in items]):  # PGD's random starts: the same in any process and order
        t0 = time.time()
        cert = certify(model, xb, yb, eps, method, norm, float64_check=float64_check, **options)
        t_cert = (time.time() - t0) / len(sel)
        robust = None
        if pgd_steps > 0:
            res = pgd(model, xb, yb, eps, norm, steps=pgd_steps, restarts=pgd_restarts) if eps > 0 else None
            robust = cert.correct if res is None else ~res.success
    if robust is not None and (cert.certified & ~robust).any():
        bad = [ids[items[k]] for k in (cert.certified & ~robust).nonzero().flatten().tolist()]
        raise UnsoundError(f"unsound certificate: inputs {bad} certified at eps={eps} but broken by PGD")
    with torch.no_grad():
        pred = model(xb).argmax(1)
    cols = zip(yb.tolist(), pred.tolist(), cert.correct.tolist(), cert.certified.tolist(),
               cert.margin_lower.tolist(), (robust if robust is not None else cert.correct).tolist())
    rows = []
    for k, (label, p, ok, cert_ok, margin, rob) in enumerate(cols):
        i = ids[items[k]]
        row = {"key": f"{eps}:{i}", "idx": i, "eps": eps, "label": label, "pred": p, "correct": ok,
               "certified": cert_ok, "margin_lb": margin, "method": method, "time_s": round(t_cert, 6)}
        if robust is not None:
            row["pgd_robust"] = rob
        if cert.verdicts is not None:
            v = cert.verdicts[k]
            row.update(verdict=v.verdict, stage=v.stage, seconds={s: round(t, 4) for s, t in v.seconds.items()})
            row["time_s"] = round(sum(v.seconds.values()), 4)
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per radius: number of inputs, clean / PGD / certified accuracy; for the complete methods (rows with a
    ``verdict``) also the counts of verified, falsified (a checked counterexample) and unknown (a timeout or a
    budget spent: neither proved nor refuted) inputs; ``errors``, the inputs whose task raised (rows with an
    ``error``, counted as neither correct nor certified), when there are any."""
    out = []
    for eps in sorted({r["eps"] for r in rows}):
        rs = [r for r in rows if r["eps"] == eps]
        ok = [r for r in rs if "error" not in r]
        row = {"eps": eps, "n": len(rs), "clean": sum(r["correct"] for r in ok) / len(rs)}
        if ok and all("pgd_robust" in r for r in ok):
            row["pgd"] = sum(r["pgd_robust"] for r in ok) / len(rs)
        row["certified"] = sum(r["certified"] for r in ok) / len(rs)
        if ok and all("verdict" in r for r in ok):
            for verdict in ("verified", "falsified", "unknown"):
                row[verdict] = sum(r["verdict"] == verdict for r in ok)
        if len(ok) < len(rs):
            row["errors"] = len(rs) - len(ok)
        out.append(row)
    return out


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per radius and cascade stage (rows with a ``verdict``): the inputs the stage ran on and decided, how many
    it verified and falsified, and its total and mean seconds per input it ran on."""
    out = []
    for eps in sorted({r["eps"] for r in rows if "verdict" in r}):
        rs = [r for r in rows if r["eps"] == eps and "verdict" in r]
        for stage in [st for st in STAGES if any(st in r["seconds"] for r in rs)]:
            ran = [r for r in rs if stage in r["seconds"]]
            total = sum(r["seconds"][stage] for r in ran)
            out.append({"eps": eps, "stage": stage, "ran": len(ran),
                        "verified": sum(r["stage"] == stage and r["verdict"] == "verified" for r in rs),
                        "falsified": sum(r["stage"] == stage and r["verdict"] == "falsified" for r in rs),
                        "seconds": round(total, 2), "s/input": round(total / len(ran), 3)})
    return out


def radius_dataset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "ibp", norm: str = "inf",
                   hi: float = 0.5, tol: float = 1e-3, batch_size: int = 256, indices: list[int] | None = None,
                   writer=None, progress: bool = False, executor=None, **options) -> list[dict]:
    """Per-input rows ``{idx, label, radius}``: :func:`max_radius` on batches of ``batch_size`` inputs (one task
    each on an :class:`~certkit.parallel.Executor` with workers), written to ``writer`` and resumed from it like
    :func:`certify_dataset`."""
    from tqdm.auto import tqdm

    from certkit.parallel import Executor, shards

    executor = executor or Executor()
    ids = list(range(len(y))) if indices is None else list(indices)
    done = writer.done if writer is not None else set()
    todo = [k for k in range(len(y)) if ids[k] not in done]
    shared = {"model": copy.deepcopy(model).cpu() if executor.distributed else model, "x": x, "y": y, "ids": ids}
    args = {"method": method, "norm": norm, "hi": hi, "tol": tol, "options": options,
            "device": str(next(model.parameters()).device)}
    rows: list[dict] = []
    bar = tqdm(total=len(y), initial=len(y) - len(todo), desc=f"radius ({method})", unit="input",
               disable=not progress)
    for shard, batch_rows in executor.map(radius_shard, shared, shards(todo, batch_size, **args),
                                          lambda k, a, msg: {"idx": ids[k], "label": int(y[k]), "error": msg}):
        if writer is not None:
            writer.write(batch_rows)
        rows += batch_rows
        bar.update(len(shard.items))
    bar.close()
    return writer.results if writer is not None else rows


def radius_shard(shared: dict, items: list[int], method: str, norm: str, hi: float, tol: float, options: dict,
                 device: str) -> list[dict]:
    """The rows of :func:`radius_dataset` for the inputs at positions ``items`` (its task function)."""
    model = shared["model"]
    if next(model.parameters()).device != torch.device(device):
        model = shared["model"] = model.to(device)
    from certkit.parallel import seeded

    sel = torch.tensor(items)
    with seeded("radius", [shared["ids"][k] for k in items]):
        r = max_radius(model, shared["x"][sel].to(device), shared["y"][sel].to(device), method, norm, hi, tol,
                       **options)
    return [{"idx": shared["ids"][k], "label": int(shared["y"][k]), "radius": float(v)} for k, v in zip(items, r)]


def max_radius(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "ibp",
    norm: str | float = "inf",
    hi: float = 0.5,
    tol: float = 1e-3,
    domain: tuple[float, float] | None = (0.0, 1.0),
    **options,
) -> torch.Tensor:
    """The largest certified radius per input, by bisection on ε in [0, hi] to within ``tol`` (B,)
    (:func:`bisect_radius`): a radius at which ``method`` certifies the input."""
    def certified(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return certify(model, x[idx.to(x.device)], y[idx.to(y.device)], eps.to(x), method, norm, domain,
                       **options).certified.cpu()

    top = certify(model, x, y, hi, method, norm, domain, **options)
    return bisect_radius(certified, top.correct.cpu(), hi, tol, top.certified.cpu())


def bisect_radius(certified: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], correct: torch.Tensor, hi: float,
                  tol: float, at_hi: torch.Tensor | None = None) -> torch.Tensor:
    """The one bisection on the certified radius, for every certifier (deterministic, Bayesian):
    ``certified(idx, eps)`` says which of the inputs ``idx`` are certified at the radii ``eps`` (one per input; a
    bool tensor on the CPU); ``correct`` (n,) marks the correctly classified inputs, the only ones bisected;
    ``at_hi``, the inputs certified at ``hi`` when already known. Returns per input the largest radius in
    [0, hi] found certified, to within ``tol``: ``hi`` when certified there, 0 for misclassified inputs.
    Certification is not monotone in ε for every method, so this is a certified radius, not necessarily the
    supremum of all certified ones."""
    n = len(correct)
    lo = torch.zeros(n, dtype=torch.float64)
    up = torch.full((n,), float(hi), dtype=torch.float64)
    if at_hi is None:
        at_hi = torch.zeros(n, dtype=torch.bool)
        idx = correct.nonzero().squeeze(1)
        if len(idx):
            at_hi[idx] = certified(idx, up[idx])
    lo[at_hi] = hi
    todo = correct & ~at_hi
    while todo.any() and (up - lo)[todo].max() > tol:
        idx = todo.nonzero().squeeze(1)
        mid = (lo[idx] + up[idx]) / 2
        ok = certified(idx, mid)
        lo[idx[ok]] = mid[ok]
        up[idx[~ok]] = mid[~ok]
        todo = todo & ((up - lo) > tol)
    return lo
