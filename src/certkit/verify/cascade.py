"""The verification cascade: per input, PGD falsification, then IBP → CROWN → α-CROWN → branch and bound → MILP,
stopping at the first verdict (:func:`verify_property`).

A property is ``min_q max_{k∈q} (C·f(x') + d)_k > 0`` for every x' of the set: each clause q (a group of spec
rows) must have a positive row. Incomplete stages prove rows positive; the complete stages (branch and bound
with β-CROWN, the MILP) decide what is left per open clause; a counterexample is a point of the set checked by a
float64 forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from certkit import graph as g
from certkit.attacks.pgd import pgd_minimize, pgd_search
from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import RULES, alpha_crown_bounds, crown_bounds
from certkit.nn import float64_copy
from certkit.specs import InputSet, LinearSpec, Property
from certkit.verify.act_bab import activation_bab
from certkit.verify.bab import SUPPORTED_OPS, ReluBab
from certkit.verify.input_bab import input_bab, splits_inputs
from certkit.verify.milp import MilpEncoding, _select
from certkit.verify.refine import refinable, refine_bounds

# bound method name -> function(model, input_set, spec, **options) -> lower bounds on the spec rows (B, K)
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "ibp": lambda model, s, spec, **_: interval_bounds(model, s, spec).lower,
    "crown": lambda model, s, spec, deadline=None, **_: crown_bounds(model, s, spec, cutoff=deadline).lower,
    "crown-ibp": lambda model, s, spec, **_: crown_bounds(model, s, spec, intermediate="ibp").lower,
    "alpha": lambda model, s, spec, iterations=20, deadline=None, **_: alpha_crown_bounds(
        model, s, spec, iterations=iterations, bound_upper=False, deadline=deadline, cutoff=deadline).lower,
}


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


def verify_property(
    model: nn.Module,
    input_set: InputSet,
    spec: LinearSpec | Property,
    clauses: torch.Tensor | None = None,
    stages: tuple[str, ...] = STAGES,
    timeout: float = 60.0,
    pgd_steps: int = 50,
    pgd_restarts: int = 3,
    alpha_iterations: int = 20,
    max_binaries: int | None = None,
    progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
    first_counterexample: bool = False,
) -> list[Verdict]:
    """Decide, per input, the property "for every x' in the set, some row of every clause is positive", i.e.
    ``min_q max_{k∈q} (C·f(x') + d)_k > 0``: a :class:`~certkit.specs.Property`, or a spec whose rows ``clauses``
    (K,) groups into clauses (default: each row its own clause, so every row must be positive — the
    classification margin). VNN-LIB's unsafe sets are disjunctions of conjunctions: a clause is one
    conjunction, negated.

    Stages run in order on the inputs still undecided: ``attack`` (PGD on the violation, re-checked in float64),
    ``ibp``, ``crown``, ``alpha`` (bounds; a clause is refuted when one of its rows is proved positive) and
    ``bab`` (branch and bound per open clause: on the input box when at most 16 inputs vary, see
    :mod:`certkit.verify.input_bab`, else on ReLUs with β-CROWN, or, for Sigmoid/Tanh networks, on activation
    intervals, :mod:`certkit.verify.act_bab`) and ``milp`` (HiGHS), both with α-CROWN-optimised
    intermediate bounds and within what is left of ``timeout`` per input: the MILP runs only where branch and
    bound stopped early without a verdict (domain budget, a fully split domain) or is left out of ``stages``.
    ``progress(n)``, if given, is told each time n more inputs are finished (per input in the complete stages).
    The batched stages stop once each input's share of their time reaches ``timeout`` (the attack at half of
    it); ``deadline`` (a ``time.perf_counter()`` value) ends every stage, the complete ones included, for all
    inputs together. With
    ``first_counterexample`` the cascade stops at the first falsified input (the rest stay 'unknown'): for a
    property that is a disjunction over the inputs, as a VNN-LIB file's boxes are.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; available: {', '.join(STAGES)}")
    prop = spec if isinstance(spec, Property) else Property(spec, clauses)
    B, K = prop.C.shape[:2]
    lower = torch.full((B, K), -math.inf, dtype=prop.C.dtype, device=prop.C.device)
    verdicts = [Verdict("unknown", "", {}) for _ in range(B)]
    open_ = torch.ones(B, dtype=torch.bool)
    refined: dict[int, dict] = {}  # per input: α-CROWN-optimised intermediate bounds, shared by bab and milp
    cache: list[nn.Module] = []

    def model64() -> nn.Module:
        """The model's float64 copy (counterexamples are checked on it), looked up once per call, when first
        needed."""
        if not cache:
            cache.append(float64_copy(model))
        return cache[0]

    def objective(m: nn.Module, p: Property, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: p.value(torch.einsum("bkn,bn->bk", p.C.to(dtype), m(x)) + p.d.to(dtype))

    start = time.perf_counter()
    budget = timeout * B  # the batched stages split their time evenly over the inputs
    end = start + budget if deadline is None else min(start + budget, deadline)
    for stage in stages:
        idx = open_.nonzero().squeeze(1)
        if len(idx) == 0 or (stage not in ("bab", "milp") and time.perf_counter() > end):
            break
        if first_counterexample and any(v.verdict == "falsified" for v in verdicts):
            break
        if stage in ("bab", "milp"):
            if not input_set.is_box:
                continue  # both split boxes only
            for b in idx.tolist():
                if not (piecewise_linear(model) or (stage == "bab" and (splits_inputs(_select(input_set, b))
                                                                        or activation_splits(model)))):
                    continue  # e.g. MaxPool: no encoding, no activation to split; those inputs stay 'unknown'
                left = timeout if deadline is None else min(timeout, deadline - time.perf_counter()
                                                             + sum(verdicts[b].seconds.values()))
                _complete_stage(stage, model, input_set, prop, b, lower, verdicts[b], left, max_binaries, refined,
                                model64)
                open_[b] = verdicts[b].verdict == "unknown"
                if progress is not None and not open_[b]:
                    progress(1)
                if first_counterexample and verdicts[b].verdict == "falsified":
                    break
            continue
        t0 = time.perf_counter()
        s, sp = input_set.subset(idx), prop.subset(idx)
        if stage == "attack":
            # at most half the time: the bounds and the complete stages (which search for counterexamples too)
            x_adv, _ = pgd_minimize(objective(model, sp, sp.C.dtype), s, pgd_steps, pgd_restarts,
                                    deadline=min(end, start + budget / 2))
            with torch.no_grad():
                v64 = objective(model64(), sp, torch.float64)(x_adv.double())
            for k, b in enumerate(idx.tolist()):
                cex = None
                if v64[k] <= 0:
                    cex = _counterexample(model64(), input_set.subset([b]), prop.subset(b), x_adv[k:k + 1])
                verdicts[b].seconds[stage] = (time.perf_counter() - t0) / len(idx)
                if cex is not None:
                    verdicts[b] = Verdict("falsified", stage, verdicts[b].seconds, cex)
                    open_[b] = False
            if progress is not None:
                progress(len(idx) - int(open_[idx].sum()))
            continue
        method = {"ibp": "ibp", "crown": "crown", "alpha": "alpha"}[stage]
        with torch.no_grad():
            lo = METHODS[method](model, s, LinearSpec(sp.C, None), iterations=alpha_iterations,
                                 deadline=end) + sp.d
        lower[idx] = torch.maximum(lower[idx], lo.nan_to_num(nan=-math.inf))
        dt = (time.perf_counter() - t0) / len(idx)
        ok = prop.proved(lower[idx])
        for k, b in enumerate(idx.tolist()):
            verdicts[b].seconds[stage] = dt
            if ok[k]:
                verdicts[b].verdict, verdicts[b].stage = "verified", stage
                open_[b] = False
        if progress is not None:
            progress(int(ok.sum()))
    if progress is not None and open_.any():
        progress(int(open_.sum()))  # finished, undecided
    for b, v in enumerate(verdicts):
        v.lower = lower[b].detach()
    return verdicts


def activation_splits(model) -> bool:
    """Branch and bound over activation intervals (:mod:`certkit.verify.act_bab`) suits the model: it has an
    S-shaped activation (ReLU-only networks go to ReLU splitting and the MILP) and CROWN bounds all its ops."""
    nodes = g.to_graph(model).nodes
    return (any(isinstance(n.op, (g.Sigmoid, g.Tanh)) for n in nodes)
            and all(isinstance(n.op, (g.Input, *RULES)) for n in nodes))


def piecewise_linear(model) -> bool:
    """The model has only the ops branch and bound and the MILP encode (ReLU/LeakyReLU networks without MaxPool)."""
    return all(isinstance(n.op, SUPPORTED_OPS) for n in g.to_graph(model).nodes)


def _complete_stage(stage: str, model, input_set: InputSet, prop: Property, b: int, lower: torch.Tensor,
                    verdict: Verdict, timeout: float, max_binaries: int | None, refined: dict[int, dict],
                    model64: Callable[[], nn.Module]) -> None:
    """Decide input b per open clause (one with no row proved positive yet), weakest first, by branch and
    bound (``stage`` 'bab') or one MILP (HiGHS), with α-CROWN-optimised intermediate bounds:
    ``min_q max_{k∈q} row_k > 0`` proves the property, a point at or below 0 (re-checked in float64) is a
    counterexample. A clause's minimum needs no binaries beyond the network's (one MILP over the disjunction
    of all clauses was measured slower: its big-M relaxation is weak)."""
    t0 = time.perf_counter()
    left = timeout - sum(verdict.seconds.values())
    if left <= 0:
        return
    one = _select(input_set, b)
    mine = prop.subset(b)
    open_q = [q for q in range(int(prop.clauses.max()) + 1) if not (lower[b, prop.rows_of(q)] > 0).any()]
    if stage == "bab" and splits_inputs(one):  # input splitting bounds its boxes itself
        pass
    elif b not in refined:
        rows = torch.cat([prop.rows_of(q) for q in open_q])
        with torch.no_grad():
            # at most half of what is left goes to the refined bounds (the optimisation stops early, soundly)
            out, refined[b] = crown_bounds(model, one, LinearSpec(prop.C[b:b + 1, rows], None), return_all=True,
                                           intermediate="alpha", deadline=t0 + left / 2, cutoff=t0 + 0.75 * left)
        lower[b, rows] = torch.maximum(lower[b, rows], out.lower[0] + prop.d[b, rows])
    pre = refined.get(b)
    enc = None
    open_q.sort(key=lambda q: float(lower[b, prop.rows_of(q)].max()))
    if stage == "bab" and not splits_inputs(one) and piecewise_linear(model):
        refined[b] = _round_robin(model, one, mine, open_q, lower[b], verdict, pre, left - (time.perf_counter() - t0),
                                  model64, input_set.subset([b]))
        verdict.seconds[stage] = time.perf_counter() - t0
        return
    if stage == "bab" and not splits_inputs(one):  # activation splitting: the easiest clauses first, so that
        open_q.reverse()  # the time they leave goes to the hardest (one unproved clause leaves the input open)
    for q in open_q:
        rq = prop.rows_of(q)
        if (lower[b, rq] > 0).any():
            continue
        budget = left - (time.perf_counter() - t0)
        if budget <= 0:
            break
        clause = mine.clause(q)
        C, d = clause.C[0], clause.d[0]
        if stage == "bab" and splits_inputs(one):  # few inputs: split the input box
            r = input_bab(model, one, C, d, time_limit=budget)
        elif stage == "bab":  # Sigmoid/Tanh: split their intervals, each clause its share of what is left
            share = budget / sum(1 for p in open_q[open_q.index(q):] if not (lower[b, prop.rows_of(p)] > 0).any())
            r = activation_bab(model, one, C, d, time_limit=share, pre=pre)
        else:
            enc = enc or MilpEncoding(model, one, pre, max_binaries)
            budget = left - (time.perf_counter() - t0)  # the encoding's time counts against the budget
            if budget <= 0:
                break
            r = enc.minimize_property(C, d, None if len(rq) == 1 else torch.zeros(len(rq)), time_limit=budget,
                                      row_lower=lower[b, rq])
        if r.verdict == "falsified":
            x = _counterexample(model64(), input_set.subset([b]), clause, r.x)
            if x is not None:
                verdict.verdict, verdict.stage, verdict.counterexample = "falsified", stage, x
            break
        # branch and bound's bound is sound either way; a MILP solve that stopped early keeps no bound (its
        # dual bound may come from a solve that was cut off, or from an encoding too large to trust)
        if len(rq) == 1 and (r.verdict == "verified" or (r.verdict == "unknown" and stage == "bab")):
            lower[b, rq] = torch.clamp(lower[b, rq], min=r.bound)
        if r.verdict != "verified":
            break
    else:
        verdict.verdict, verdict.stage = "verified", stage
    verdict.seconds[stage] = time.perf_counter() - t0


def _round_robin(model, one: InputSet, prop: Property, open_q: list[int], lower: torch.Tensor, verdict: Verdict,
                 pre: dict, budget: float, model64: Callable[[], nn.Module], exact: InputSet,
                 first_slice: float = 1.0, search_share: float = 0.1, refine_share: float = 0.5) -> dict:
    """ReLU branch and bound of the open clauses ``open_q`` (weakest first) of one input, sharing ``budget``
    seconds round robin with slices that double each round (1 s, 2 s, 4 s, ... each), every clause's search
    resumed where it stopped: a counterexample in any clause ends the search (one clause's tree cannot hide
    another's easy counterexample), and the clauses proved early leave their time to the hard ones. After each
    round that leaves a clause open, random-restart PGD (:func:`~certkit.attacks.pgd.pgd_search`) on the whole
    property gets ``search_share`` of that round's time (on COLT's MNIST net it finds counterexamples that
    120 s of branch and bound miss). Sets ``verdict`` (verified when every clause is, falsified at a checked
    counterexample); a clause whose search ends for good without a verdict (domain budget, a fully split domain)
    leaves the input to the MILP. When the first round leaves a clause open, the intermediate bounds are
    tightened by :func:`~certkit.verify.refine.refine_bounds` (at most ``refine_share`` of the time left; only
    where :func:`~certkit.verify.refine.refinable`), and an open clause's search starts again with them when
    α-CROWN's bound on the refined ones beats the search's bound so far. Returns the intermediate bounds it ended
    with."""
    t0 = time.perf_counter()
    searches = {}
    todo = list(open_q)
    size = first_slice
    refined = False
    now: dict[int, float] = {}  # each open clause's search: its bound so far
    C, d = prop.C[0], prop.d[0]

    def value(x: torch.Tensor) -> torch.Tensor:
        out = model(x).flatten(1)
        return prop.value(out @ C.T.to(out.dtype) + d.to(out.dtype))

    def falsified(x: torch.Tensor) -> bool:
        cex = _counterexample(model64(), exact, prop, x)
        if cex is not None:
            verdict.verdict, verdict.stage, verdict.counterexample = "falsified", "bab", cex
        return cex is not None

    while todo:
        t_round = time.perf_counter()
        for q in list(todo):
            left = budget - (time.perf_counter() - t0)
            if left <= 0:
                return pre
            if q not in searches:
                clause = prop.clause(q)
                searches[q] = ReluBab(model, one, clause.C[0], clause.d[0], pre=pre)
            r = searches[q].run(min(size, left))
            if r.verdict == "falsified":
                falsified(r.x)
                return pre
            if r.verdict == "verified":
                todo.remove(q)
                rq = prop.rows_of(q)
                if len(rq) == 1:
                    lower[rq] = torch.clamp(lower[rq], min=r.bound)
                del searches[q]
            elif searches[q].finished:
                return pre  # given up for good: the MILP decides
            else:
                now[q] = r.bound
        left = budget - (time.perf_counter() - t0)
        if todo and search_share > 0 and left > 0:
            x, v = pgd_search(value, one.lower, one.upper, min(search_share * (time.perf_counter() - t_round), left))
            if v <= 0 and falsified(x):
                return pre
        left = budget - (time.perf_counter() - t0)
        if todo and not refined and refine_share > 0 and left > 0 and pre is not None and refinable(model, pre):
            refined = True
            rows = torch.cat([prop.rows_of(q) for q in todo])

            def proved(lo: torch.Tensor, rows=rows) -> bool:
                ok = torch.zeros(len(lower), dtype=torch.bool, device=lo.device)
                ok[rows] = lo[0] > 0
                return all(bool(ok[prop.rows_of(q)].any()) for q in todo)

            pre, lo, _ = refine_bounds(model, one, pre, LinearSpec(C[rows][None], d[rows][None]),
                                       time.perf_counter() + refine_share * left, done=proved)
            lower[rows] = torch.maximum(lower[rows], lo[0])
            todo = [q for q in todo if not (lower[prop.rows_of(q)] > 0).any()]
            for q in list(searches):  # a clause starts again on the refined bounds where they beat its search
                if q not in todo or float(lower[prop.rows_of(q)].max()) > now.get(q, -math.inf):
                    del searches[q]
        size *= 2
    verdict.verdict, verdict.stage = "verified", "bab"
    return pre


def _counterexample(model64: nn.Module, one: InputSet, prop: Property, x: torch.Tensor) -> torch.Tensor | None:
    """A point of the set ``one`` (as the user defined it: the float64 set, not its rounded box) that violates
    the property ``prop`` of that one input (some clause with every row of ``C·f + d`` ≤ 0, by a float64 forward
    pass), from a candidate
    ``x``: clamped into the set's float64 box, returned in the input's dtype if that rounding stays in the set
    and still violates, else in float64; None if the candidate is not a counterexample."""
    exact = one.to(dtype=torch.float64)
    x64 = torch.minimum(torch.maximum(x.detach().double().reshape(exact.x.shape), exact.lower), exact.upper)

    def violates(p: torch.Tensor) -> bool:
        with torch.no_grad():
            rows = prop.C[0].double() @ model64(p).reshape(-1) + prop.d[0].double()
        return bool(exact.contains(p, tol=0.0)[0]) and float(prop.value(rows[None])[0]) <= 0

    xr = x64.to(one.lower.dtype)
    if violates(xr.double()):
        return xr
    return x64 if violates(x64) else None
