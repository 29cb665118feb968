"""Certification of classifiers over input sets: per-input verdicts, batched.

``certify(model, x, y, eps, method='ibp')`` returns, per input, whether the clean prediction is correct and
whether the bound proves ``f_y > f_j`` for all ``j ≠ y`` over the whole ball (a certificate is only claimed for
correctly classified inputs). Methods: ``ibp``, ``crown``, ``crown-ibp``, ``alpha`` (α-CROWN), ``bab`` (branch
and bound with β-CROWN), ``milp`` (exact, HiGHS) and ``cascade``: :func:`verify_property` runs, per input, a PGD
falsification attempt and then IBP → CROWN → α-CROWN → branch and bound → MILP, stopping at the first verdict.
:func:`max_radius` bisects on ε for any method.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from certkit.bounds.interval import Bounds, interval_bounds
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.specs import Box, InputSet, LinearSpec, LpBall, SpecError, ball, check_finite, margin_spec


def _complete_lower(model: nn.Module, s: InputSet, spec: LinearSpec, solver: str, timeout: float = 60.0,
                    max_binaries: int | None = None, **_) -> torch.Tensor:
    """Lower bounds of the spec rows by a complete method, ``solver`` 'milp' (HiGHS with CROWN's intermediate
    bounds) or 'bab' (branch and bound with β-CROWN, α-CROWN's intermediate bounds), within ``timeout`` seconds
    per input, stopping per row once its sign is decided (a verified row gets the solver's proven bound, above
    0; a falsified or undecided one keeps CROWN's, at or below 0) and per input at the first row not proved."""
    from certkit.bounds.bab import bab
    from certkit.bounds.milp import MilpEncoding, _select

    crown, pre = crown_bounds(model, s, spec, return_all=True, intermediate="alpha" if solver == "bab" else "crown")
    lower = crown.lower.clone()
    for b in range(s.batch_size):
        t0 = time.perf_counter()
        enc = None
        pb = {i: Bounds(v.lower[b:b + 1], v.upper[b:b + 1]) for i, v in pre.items()}
        for k in lower[b].argsort().tolist():
            if lower[b, k] > 0:
                continue
            d = 0.0 if spec.d is None else float(spec.d[b, k])
            left = timeout - (time.perf_counter() - t0)
            if solver == "bab":
                r = bab(model, _select(s, b), spec.C[b, k:k + 1], torch.tensor([d]), time_limit=left, pre=pb)
            else:
                enc = enc or MilpEncoding(model, _select(s, b), pb, max_binaries)
                r = enc.minimize(spec.C[b, k], d, time_limit=left)
            if r.verdict == "verified":
                lower[b, k] = max(r.bound, lower[b, k].item())
            # falsified or unknown: the row keeps its CROWN bound (≤ 0, a proven bound; an unknown's solver bound
            # must never certify, and a counterexample's value is an upper bound on the minimum, not a lower one)
            if r.verdict != "verified":
                break  # one row that is not proved decides the input
    return lower


# method name -> function(model, input_set, spec, **options) -> lower bounds on the spec rows (B, K)
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "ibp": lambda model, s, spec, **_: interval_bounds(model, s, spec).lower,
    "crown": lambda model, s, spec, **_: crown_bounds(model, s, spec).lower,
    "crown-ibp": lambda model, s, spec, **_: crown_bounds(model, s, spec, intermediate="ibp").lower,
    "alpha": lambda model, s, spec, iterations=20, **_: alpha_crown_bounds(
        model, s, spec, iterations=iterations, bound_upper=False).lower,
    "bab": lambda model, s, spec, **o: _complete_lower(model, s, spec, "bab", **o),
    "milp": lambda model, s, spec, **o: _complete_lower(model, s, spec, "milp", **o),
}


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

    ``options`` go to the method: ``iterations`` (alpha), ``timeout`` (seconds per input; milp, cascade),
    ``max_binaries`` (milp, cascade) and the other arguments of :func:`verify_property` (cascade).
    With ``float64_check``, inputs certified in the model's dtype are certified again on a float64 copy of the
    model, and only inputs that pass both keep the verdict (guards against float32 round-off at tiny margins).
    """
    if method not in METHODS and method != "cascade":
        raise ValueError(f"unknown certification method {method!r}; available: {', '.join(METHODS)}, cascade")
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
    if method == "cascade":
        verdicts = verify_property(model, s, spec, **options)
        lower = torch.stack([v.lower for v in verdicts])
        verified = torch.tensor([v.verdict == "verified" for v in verdicts], device=x.device)
    else:
        lower = METHODS[method](model, s, spec, **options)
        verified = torch.ones_like(correct)
    margin = lower.min(1).values.nan_to_num(nan=-torch.inf)  # overflowing bounds prove nothing
    certified = correct & (margin > 0) & verified
    if float64_check and certified.any() and x.dtype != torch.float64:
        model64 = copy.deepcopy(model).double()
        e = torch.as_tensor(eps, dtype=torch.float64)
        e = e[certified] if e.dim() > 0 else e
        again = certify(model64, x[certified].double(), y[certified], e, method, norm, domain, k, **options)
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
    **options,
) -> list[dict]:
    """Per-input rows ``{key, idx, eps, label, pred, correct, pgd_robust, certified, margin_lb, time_s}``, and
    for the cascade ``verdict``, ``stage`` and ``seconds`` per stage. ``options`` go to :func:`certify`.

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
        cert = certify(model, xb, yb, eps, method, norm, float64_check=float64_check, **options)
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
            if cert.verdicts is not None:
                v = cert.verdicts[k]
                row.update(verdict=v.verdict, stage=v.stage, seconds={s: round(t, 4) for s, t in v.seconds.items()})
                row["time_s"] = round(sum(v.seconds.values()), 4)
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


# ------------------------------------------------------------------------------------------------ cascade
STAGES = ("attack", "ibp", "crown", "alpha", "bab", "milp")


@dataclass
class Verdict:
    """One input's answer: ``verdict`` is 'verified', 'falsified' (``counterexample`` violates the property,
    re-checked in float64) or 'unknown'; ``stage`` decided it; ``seconds`` per stage (batched stages split
    their time evenly over the inputs they ran on); ``lower``: the best proven lower bound per row. The
    counterexample is a point of the set in the input's dtype whose violation was checked by a float64 forward
    pass (in float64 only when rounding the solver's float64 point to the input's dtype loses the violation)."""

    verdict: str
    stage: str
    seconds: dict[str, float] = field(default_factory=dict)
    counterexample: torch.Tensor | None = None
    lower: torch.Tensor | None = None


def _clause_min(values: torch.Tensor, clauses: torch.Tensor) -> torch.Tensor:
    """min over clauses of (max over the clause's rows): ≤ 0 iff some clause has all its rows ≤ 0, i.e. the
    point violates the property. values: (B, K)."""
    n = int(clauses.max()) + 1
    per = torch.full((values.shape[0], n), -math.inf, dtype=values.dtype, device=values.device)
    per = per.scatter_reduce(1, clauses.expand_as(values), values, reduce="amax")
    return per.min(1).values


def _proved(lower: torch.Tensor, clauses: torch.Tensor) -> torch.Tensor:
    """Every clause has a row whose lower bound is positive. (B,) bool."""
    return _clause_min(lower, clauses) > 0


def verify_property(
    model: nn.Module,
    input_set: InputSet,
    spec: LinearSpec,
    clauses: torch.Tensor | None = None,
    stages: tuple[str, ...] = STAGES,
    timeout: float = 60.0,
    pgd_steps: int = 50,
    pgd_restarts: int = 3,
    alpha_iterations: int = 20,
    max_binaries: int | None = None,
) -> list[Verdict]:
    """Decide, per input, the property "for every x' in the set, some row of every clause is positive", i.e.
    ``min_q max_{k∈q} (C·f(x') + d)_k > 0``; ``clauses`` (K,) gives each spec row's clause (default: each row
    its own clause, so every row must be positive — the classification margin). VNN-LIB's unsafe sets are
    disjunctions of conjunctions: a clause is one conjunction, negated.

    Stages run in order on the inputs still undecided: ``attack`` (PGD on the violation, re-checked in float64),
    ``ibp``, ``crown``, ``alpha`` (bounds; a clause is refuted when one of its rows is proved positive) and
    ``bab`` (branch and bound with β-CROWN, per open clause) and ``milp`` (HiGHS), both with α-CROWN-optimised
    intermediate bounds and within what is left of ``timeout`` per input: the MILP runs only where branch and
    bound stopped early without a verdict (domain budget, a fully split domain) or is left out of ``stages``.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; available: {', '.join(STAGES)}")
    B, K = spec.C.shape[:2]
    clauses = torch.arange(K) if clauses is None else torch.as_tensor(clauses)
    if clauses.shape != (K,):
        raise SpecError(f"clauses must give one clause index per spec row ({K}), got shape {tuple(clauses.shape)}")
    clauses = clauses.to(spec.C.device)
    d = spec.d if spec.d is not None else torch.zeros(B, K, dtype=spec.C.dtype, device=spec.C.device)
    lower = torch.full((B, K), -math.inf, dtype=spec.C.dtype, device=spec.C.device)
    verdicts = [Verdict("unknown", "", {}) for _ in range(B)]
    open_ = torch.ones(B, dtype=torch.bool)
    refined: dict[int, dict] = {}  # per input: α-CROWN-optimised intermediate bounds, shared by bab and milp

    def sub(idx: torch.Tensor) -> tuple[InputSet, LinearSpec]:
        s = _subset(input_set, idx)
        return s, LinearSpec(spec.C[idx], d[idx])

    def objective(m, C, dd):
        return lambda x: _clause_min(torch.einsum("bkn,bn->bk", C, m(x)) + dd, clauses)

    for stage in stages:
        idx = open_.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        if stage in ("bab", "milp"):
            if not input_set.is_box:
                continue  # both split boxes only
            if not _relu_only(model):
                continue  # e.g. MaxPool, Sigmoid: no encoding; those inputs stay 'unknown'
            for b in idx.tolist():
                _complete_stage(stage, model, input_set, spec, d, clauses, b, lower, verdicts[b], timeout,
                                max_binaries, refined)
                open_[b] = verdicts[b].verdict == "unknown"
            continue
        t0 = time.perf_counter()
        s, sp = sub(idx)
        if stage == "attack":
            from certkit.attacks.pgd import pgd_minimize

            x_adv, _ = pgd_minimize(objective(model, sp.C, sp.d), s, pgd_steps, pgd_restarts)
            model64 = copy.deepcopy(model).double()
            with torch.no_grad():
                v64 = objective(model64, sp.C.double(), sp.d.double())(x_adv.double())
            inside = s.contains(x_adv)
            dt = (time.perf_counter() - t0) / len(idx)
            for k, b in enumerate(idx.tolist()):
                verdicts[b].seconds[stage] = dt
                if v64[k] <= 0 and inside[k]:
                    verdicts[b] = Verdict("falsified", stage, verdicts[b].seconds, x_adv[k:k + 1].detach())
                    open_[b] = False
            continue
        method = {"ibp": "ibp", "crown": "crown", "alpha": "alpha"}[stage]
        with torch.no_grad():
            lo = METHODS[method](model, s, LinearSpec(sp.C, None), iterations=alpha_iterations) + sp.d
        lower[idx] = torch.maximum(lower[idx], lo.nan_to_num(nan=-math.inf))
        dt = (time.perf_counter() - t0) / len(idx)
        ok = _proved(lower[idx], clauses)
        for k, b in enumerate(idx.tolist()):
            verdicts[b].seconds[stage] = dt
            if ok[k]:
                verdicts[b].verdict, verdicts[b].stage = "verified", stage
                open_[b] = False
    for b, v in enumerate(verdicts):
        v.lower = lower[b].detach()
    return verdicts


def _relu_only(model) -> bool:
    """The model has only the ops branch and bound and the MILP encode (ReLU networks without MaxPool)."""
    from certkit import graph as g
    from certkit.bounds.bab import SUPPORTED_OPS

    return all(isinstance(n.op, SUPPORTED_OPS) for n in g.to_graph(model).nodes)


def _subset(input_set: InputSet, idx: torch.Tensor) -> InputSet:
    if isinstance(input_set, LpBall):
        return type(input_set)(input_set.x[idx], input_set.eps.flatten()[idx], domain=input_set.domain)
    return Box(input_set.lower[idx], input_set.upper[idx])


def _complete_stage(stage: str, model, input_set, spec, d, clauses, b, lower, verdict: Verdict, timeout,
                    max_binaries, refined: dict[int, dict]) -> None:
    """Decide input b per open clause (one with no row proved positive yet), weakest first, by branch and
    bound (``stage`` 'bab') or one MILP (HiGHS), with α-CROWN-optimised intermediate bounds:
    ``min_q max_{k∈q} row_k > 0`` proves the property, a point at or below 0 (re-checked in float64) is a
    counterexample. A clause's minimum needs no binaries beyond the network's (one MILP over the disjunction
    of all clauses was measured slower: its big-M relaxation is weak)."""
    from certkit.bounds.bab import bab
    from certkit.bounds.milp import MilpEncoding, _select

    t0 = time.perf_counter()
    left = timeout - sum(verdict.seconds.values())
    if left <= 0:
        return
    one = _select(input_set, b)
    open_q = [q for q in clauses.unique().tolist() if not (lower[b][clauses == q] > 0).any()]
    if b not in refined:
        rows = torch.cat([(clauses == q).nonzero().squeeze(1) for q in open_q])
        with torch.no_grad():
            out, refined[b] = crown_bounds(model, one, LinearSpec(spec.C[b:b + 1, rows], None), return_all=True,
                                           intermediate="alpha")
        lower[b, rows] = torch.maximum(lower[b, rows], out.lower[0] + d[b, rows])
    pre = refined[b]
    enc = None
    open_q.sort(key=lambda q: float(lower[b][clauses == q].max()))
    for q in open_q:
        rq = (clauses == q).nonzero().squeeze(1)
        if (lower[b, rq] > 0).any():
            continue
        budget = left - (time.perf_counter() - t0)
        if budget <= 0:
            break
        if stage == "bab":
            r = bab(model, one, spec.C[b, rq], d[b, rq], time_limit=budget, pre=pre)
        else:
            enc = enc or MilpEncoding(model, one, pre, max_binaries)
            r = enc.minimize_property(spec.C[b, rq], d[b, rq], None if len(rq) == 1 else torch.zeros(len(rq)),
                                      time_limit=budget, row_lower=lower[b, rq])
        if r.verdict == "falsified":
            x = _in_input_dtype(model, one, spec.C[b, rq], d[b, rq], r.x)
            verdict.verdict, verdict.stage, verdict.counterexample = "falsified", stage, x
            break
        if r.verdict != "verified":
            break
        if len(rq) == 1:
            lower[b, rq] = torch.clamp(lower[b, rq], min=r.bound)
    else:
        verdict.verdict, verdict.stage = "verified", stage
    verdict.seconds[stage] = time.perf_counter() - t0


def _in_input_dtype(model, one: InputSet, C: torch.Tensor, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A counterexample ``x`` (checked in float64: every row of ``C·f(x) + d`` is ≤ 0) in the input's dtype,
    clamped into the set, if the rounded point still violates the clause in float64; else ``x`` itself."""
    dtype = one.lower.dtype
    if x.dtype == dtype:
        return x
    xr = torch.minimum(torch.maximum(x.detach().to(dtype), one.lower), one.upper)
    with torch.no_grad():
        rows = C.double() @ copy.deepcopy(model).double()(xr.double()).reshape(-1) + d.double()
    return xr if bool((rows <= 0).all()) else x


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
    """The largest certified radius per input, by bisection on ε in [0, hi] to within ``tol`` (B,).

    Returns a radius at which ``method`` certifies the input (0 for misclassified inputs, ``hi`` if certified
    there). Certification is not monotone in ε for every method, so this is a certified radius, not
    necessarily the supremum of all certified ones.
    """
    lo_eps = torch.zeros(len(y), dtype=torch.float64)
    hi_eps = torch.full((len(y),), float(hi), dtype=torch.float64)
    top = certify(model, x, y, hi, method, norm, domain, **options)
    lo_eps[top.certified.cpu()] = hi
    todo = top.correct.cpu() & ~top.certified.cpu()
    while todo.any() and (hi_eps - lo_eps)[todo].max() > tol:
        idx = todo.nonzero().squeeze(1)
        mid = (lo_eps[idx] + hi_eps[idx]) / 2
        c = certify(model, x[idx.to(x.device)], y[idx.to(y.device)], mid.to(x), method, norm, domain, **options)
        ok = c.certified.cpu()
        lo_eps[idx[ok]] = mid[ok]
        hi_eps[idx[~ok]] = mid[~ok]
        todo = todo & ((hi_eps - lo_eps) > tol)
    return lo_eps
