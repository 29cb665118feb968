"""Branch and bound over ReLU splits with β-CROWN bounds (Wang et al. 2021, "Beta-CROWN").

A *domain* is the input set together with a sign for some unstable ReLUs: ``z_k ≥ 0`` (active) or ``z_k ≤ 0``
(inactive). Splitting a neuron makes its ReLU exact (identity or zero) in each child; the two children cover the
parent. Each domain is bounded by the CROWN backward pass of :mod:`certkit.bounds.linear` with the split
neurons' intermediate bounds clipped at 0 and with the split constraints added through Lagrange multipliers
(β-CROWN, their eq. 6): for ``β ≥ 0``,

    min_{x in domain} c·f(x)  ≥  min_{x in box} [ c·f(x) − Σ_k β_k s_k z_k(x) ],

where ``s_k = ±1`` is the split's sign, because every term ``s_k z_k`` is non-negative in the domain. The lower
ReLU slopes α (α-CROWN) and the multipliers β are optimised per domain by projected Adam; any α in [0, 1] and
β ≥ 0 gives a sound bound, and a child inherits its parent's bound (its set is smaller), so every number this
module reports is a lower bound. The property is proved when every leaf domain's bound is positive; the minima
of the domains' linear bounds are tried as counterexamples (re-checked in float64) on the way.

Intermediate bounds are those of the root (α-CROWN-optimised, or refined by :mod:`certkit.verify.refine`), clipped
by the splits (tightening them per domain by CROWN after each split was measured slower: 4× the time per domain,
and a worse bound after 60 s on COLT's MNIST net and on a VNN-COMP MLP), and the neuron to split is chosen by a
BaBSR-style score: the loss the upper relaxation's intercept causes in the current bound (filtered smart branching,
``fsb=k``, tries the k best-scored neurons on both children first; on mnist_fc's 256×4 net it needed more domains
than the score alone and is off by default). A search (:class:`ReluBab`) can be resumed, so that the cascade shares
one input's time between its clauses round robin.
Only ReLU networks (Linear, Conv, AvgPool, Add, Flatten, per-channel affine) are supported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from certkit import graph as g
from certkit.attacks.pgd import pgd_minimize
from certkit.bounds.interval import Bounds
from certkit.bounds.linear import _backward, crown_bounds, relu_relaxations
from certkit.bounds.relax import relu_relaxation
from certkit.nn import float64_copy
from certkit.specs import Box, InputSet, LinearSpec, SpecError

# the ops of the networks that branch and bound (and the MILP encoding) handle: piecewise-linear networks
# (ReLU, LeakyReLU) without MaxPool
SUPPORTED_OPS = (g.Input, g.AffineOp, g.AvgPool2d, g.Flatten, g.Unflatten, g.Reindex, g.Add, g.PiecewiseLinear)


@dataclass
class BabResult:
    """``verdict``: 'verified' (every domain's bound is positive), 'falsified' (``x`` violates the clause,
    checked in float64) or 'unknown' (time or domain budget spent, or a fully split domain left undecided);
    ``bound``: a sound lower bound of ``min_x max_k (C·f(x) + d)_k`` over the set (−inf before the root's
    bound); ``value``: that function at ``x`` (+inf without a counterexample); ``domains``: domains bounded."""

    verdict: str
    bound: float
    value: float
    x: torch.Tensor | None
    domains: int
    seconds: float


def clause_rows(C, d, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One clause's rows ``C`` (K, n_out) and offsets ``d`` (K,; default 0) as tensors of ``like``'s dtype and
    device; a clear error for other shapes."""
    C = torch.as_tensor(C, dtype=like.dtype, device=like.device)
    d = (torch.zeros(C.shape[0], dtype=like.dtype, device=like.device) if d is None
         else torch.as_tensor(d, dtype=like.dtype, device=like.device).reshape(-1))
    if C.dim() != 2 or d.shape != (C.shape[0],):
        raise SpecError(f"C must be (K, n_out) and d (K,), got {tuple(C.shape)} and {tuple(d.shape)}")
    return C, d


def violation_check(model, clause, lo: torch.Tensor, hi: torch.Tensor):
    """``violates(x)``: the point ``x`` (1, ...) lies in the box [lo, hi] and ``clause(m, x) <= 0`` holds for a
    float64 copy ``m`` of the model (made on first use: the model's own dtype may round a near-tie)."""
    model64 = None

    def violates(x: torch.Tensor) -> bool:
        nonlocal model64
        if model64 is None:
            model64 = float64_copy(model)
        inside = bool(((x >= lo) & (x <= hi)).all())
        with torch.no_grad():
            return inside and float(clause(model64, x.double())[0]) <= 0

    return violates


@dataclass
class Domains:
    """Open domains, one row each: the split signs per ReLU layer ``split[j]`` (D, unstable; +1 active, −1
    inactive, 0 free), their optimised α and β (D, K, unstable), the split scores (D, candidates) and the lower
    bounds ``low`` (D, K) of the clause's rows (the domain is proved when one row is positive)."""

    split: dict[int, torch.Tensor]
    alpha: dict[int, torch.Tensor]
    beta: dict[int, torch.Tensor]
    scores: torch.Tensor
    low: torch.Tensor

    def __len__(self) -> int:
        return len(self.low)

    @property
    def value(self) -> torch.Tensor:
        """Each domain's bound on the clause (D,): the best of its rows."""
        return self.low.max(1).values

    def take(self, idx: torch.Tensor) -> Domains:
        """The domains at ``idx`` (indices or a bool mask)."""
        return Domains({j: t[idx] for j, t in self.split.items()}, {j: t[idx] for j, t in self.alpha.items()},
                       {j: t[idx] for j, t in self.beta.items()}, self.scores[idx], self.low[idx])

    def __add__(self, other: Domains) -> Domains:
        def cat(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            return {j: torch.cat([a[j], b[j]]) for j in a}

        return Domains(cat(self.split, other.split), cat(self.alpha, other.alpha), cat(self.beta, other.beta),
                       torch.cat([self.scores, other.scores]), torch.cat([self.low, other.low]))


@dataclass
class _Counterexample:
    x: torch.Tensor
    value: float


class _Problem:
    """One input set and one clause, with the root's intermediate bounds and the unstable neurons."""

    def __init__(self, model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor, pre: dict[int, Bounds] | None):
        if not input_set.is_box:
            raise SpecError("branch and bound splits box-shaped input sets (L∞ balls, boxes) only")
        if input_set.batch_size != 1:
            raise SpecError(f"branch and bound takes one input at a time, got a batch of {input_set.batch_size}")
        self.graph = graph = g.to_graph(model)
        bad = [n for n in graph.nodes if not isinstance(n.op, SUPPORTED_OPS)]
        if bad:
            raise g.UnsupportedOpError(f"branch and bound supports piecewise-linear networks only; {bad[0].op!r} "
                                       f"(node '{bad[0].name}') is not supported; it supports: "
                                       + ", ".join(g.supported_ops(dict.fromkeys(SUPPORTED_OPS))))
        self.model = model
        self.lo, self.hi = input_set.lower, input_set.upper
        dtype = self.lo.dtype
        self.C, self.d = C.to(self.lo).reshape(1, -1, C.shape[-1]), d.to(self.lo).reshape(1, -1)
        if pre is None:
            with torch.no_grad():
                _, pre = crown_bounds(graph, Box(self.lo, self.hi), LinearSpec(self.C, None), return_all=True,
                                      intermediate="alpha")
        self.pre = pre
        with torch.no_grad():
            self.shapes = [tuple(v.shape[1:]) for v in graph.forward(input_set.x.to(dtype), return_all=True)]
        self.relus = [n.inputs[0] for n in graph.nodes if isinstance(n.op, g.PiecewiseLinear)]
        self.leak = {n.inputs[0]: n.op.negative_slope for n in graph.nodes if isinstance(n.op, g.PiecewiseLinear)}
        self.unstable = {j: ((pre[j].lower < 0) & (pre[j].upper > 0)).flatten().nonzero().squeeze(1)
                         for j in self.relus}
        self.n_unstable = sum(len(u) for u in self.unstable.values())
        # violates(x): the point is in the set and violates the clause in float64
        self.violates = violation_check(model, lambda m, x: self.clause_value(x, m), self.lo, self.hi)

    def clause_value(self, x: torch.Tensor, model=None) -> torch.Tensor:
        """``max_k (C·f(x) + d)_k`` for a batch of points."""
        out = (model or self.model)(x).flatten(1)
        C, d = self.C[0].to(out.dtype), self.d[0].to(out.dtype)
        return (out @ C.T + d).max(1).values

    def bound(self, split: dict[int, torch.Tensor], alpha: dict[int, torch.Tensor], beta: dict[int, torch.Tensor],
              iterations: int, lr: float) -> tuple[torch.Tensor, dict, dict, torch.Tensor, torch.Tensor]:
        """Lower bounds (D, K) of the clause rows over D domains, optimising α and β (warm-started from the
        given compact tensors, (D, K, U_j)) by projected Adam; returns the bounds, the optimised α and β, the
        branching scores (D, U), and one candidate counterexample per row (D·K, ...). A domain leaves the
        optimisation at the first iterate that proves it (about half of a search's domains are proved, half of
        those before any step), so the later steps and the final pass cost only what is still open; a proved
        domain's scores are −1 and its candidates the box's lower corner (it is dropped anyway)."""
        D = next(iter(split.values())).shape[0] if split else 1
        K = self.C.shape[1]
        dtype, dev = self.lo.dtype, self.lo.device
        pre, base, relax = self._domain_pre(split, D)
        live = torch.arange(D, device=dev)  # the domains not proved yet, and their share of every tensor:
        cur = {"pre": pre, "base": base, "relax": relax, "split": split,
               "a": {j: v.detach().clone() for j, v in alpha.items()},
               "bt": {j: v.detach().clone() for j, v in beta.items()}}
        moments = {key: {j: (torch.zeros_like(v), torch.zeros_like(v)) for j, v in cur[key].items()}
                   for key in ("a", "bt")}
        best = torch.full((D, K), -math.inf, dtype=dtype, device=dev)

        boxes: dict[int, Box] = {}

        def run(a, bt, record=None):
            n = len(live)
            if n not in boxes:
                boxes[n] = Box(self.lo.expand(n, *self.lo.shape[1:]), self.hi.expand(n, *self.hi.shape[1:]))
            alphas, betas = self._full(a, bt, cur["split"], cur["base"])
            return _backward(self.graph, self.graph.output, self.C.expand(n, -1, -1), self.shapes, cur["pre"],
                             boxes[n], self.d.expand(n, -1), alphas, betas, record, cur["relax"])

        def take(t, keep):
            if isinstance(t, dict):
                return {j: take(v, keep) for j, v in t.items()}
            if isinstance(t, (tuple, list)):
                return type(t)(take(v, keep) for v in t)
            if isinstance(t, Bounds):
                return Bounds(t.lower[keep], t.upper[keep])
            return t[keep]

        if cur["a"] or cur["bt"]:
            b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, by hand so that rows can leave
            for step in range(1, iterations + 1):
                a = {j: v.requires_grad_(True) for j, v in cur["a"].items()}
                bt = {j: v.requires_grad_(True) for j, v in cur["bt"].items()}
                with torch.enable_grad():
                    lo = run(a, bt)
                    grads = torch.autograd.grad(-lo.sum(), [*a.values(), *bt.values()])
                lo = lo.detach()
                best[live] = torch.maximum(best[live], lo)
                with torch.no_grad():
                    for (key, j), gr in zip([("a", j) for j in a] + [("bt", j) for j in bt], grads):
                        m, v = moments[key][j]
                        m.mul_(b1).add_(gr, alpha=1 - b1)
                        v.mul_(b2).addcmul_(gr, gr, value=1 - b2)
                        upd = (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
                        p = cur[key][j].detach() - lr * upd
                        cur[key][j] = p.clamp(0, 1) if key == "a" else p.clamp(min=0)
                keep = lo.max(1).values <= 0
                if (~keep).sum() * 10 >= len(keep) or (step == iterations and not keep.all()):  # worth the copies
                    live = live[keep]
                    cur = take(cur, keep)
                    moments = take(moments, keep)
                if len(live) == 0:
                    break
        scores = torch.full((D, max(self.n_unstable, 1)), -1.0, dtype=dtype, device=dev)
        xs = self.lo.expand(D * K, *self.lo.shape[1:]).clone()
        out_a = {j: v.detach().clone() for j, v in alpha.items()}
        out_b = {j: v.detach().clone() for j, v in beta.items()}
        if len(live):
            record: dict[int, torch.Tensor] = {}
            with torch.no_grad():
                last = run(cur["a"], cur["bt"], record)
                best[live] = torch.maximum(best[live], last)
                scores[live] = self._scores(record, cur["pre"], cur["split"])
                A = record[-1]  # the minimiser over the box of each row's linear bound: a candidate counterexample
                xl = torch.where(A >= 0, self.lo.unsqueeze(1), self.hi.unsqueeze(1))
                rows = (live.unsqueeze(1) * K + torch.arange(K, device=dev)).reshape(-1)
                xs[rows] = xl.reshape(len(live) * K, *self.lo.shape[1:])
            for j in out_a:
                out_a[j][live] = cur["a"][j].detach()
            for j in out_b:
                out_b[j][live] = cur["bt"][j].detach()
        return best, out_a, out_b, scores, xs

    def _domain_pre(self, split: dict[int, torch.Tensor], D: int
                    ) -> tuple[dict[int, Bounds], dict[int, torch.Tensor], dict[int, tuple[torch.Tensor, ...]]]:
        """The root's intermediate bounds clipped by each domain's splits, the default lower ReLU slopes
        (D, K, n) of the clipped bounds, and their relaxations (see :func:`relu_relaxations`)."""
        K = self.C.shape[1]
        pre: dict[int, Bounds] = {}
        base: dict[int, torch.Tensor] = {}
        for j in sorted(self.pre):
            b = self.pre[j]
            lo, up = b.lower.flatten(1).expand(D, -1).clone(), b.upper.flatten(1).expand(D, -1).clone()
            u = self.unstable.get(j)
            if u is not None and len(u):
                s_j = split[j]
                lo[:, u] = torch.where(s_j > 0, lo[:, u].clamp(min=0), lo[:, u])
                up[:, u] = torch.where(s_j < 0, up[:, u].clamp(max=0), up[:, u])
            pre[j] = Bounds(lo.view(D, *self.shapes[j]), up.view(D, *self.shapes[j]))
        relax = relu_relaxations(self.graph, pre)
        for j in self.unstable:
            base[j] = relax[j][1].flatten(2).expand(D, K, -1)
        return pre, base, relax

    def _full(self, a: dict[int, torch.Tensor], bt: dict[int, torch.Tensor], split: dict[int, torch.Tensor],
              base: dict[int, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """The compact α and β (D, K, U_j) of the unstable neurons as the full slopes and split terms
        (D, K, *shape) that the backward pass takes."""
        alphas, betas = {}, {}
        for j in self.relus:
            u = self.unstable[j]
            if len(u) == 0:
                continue
            D, K, n = base[j].shape
            alphas[j] = base[j].index_copy(2, u, a[j]).view(D, K, *self.shapes[j])
            term = -bt[j] * split[j].unsqueeze(1).to(bt[j].dtype)
            zero = torch.zeros(D, K, n, dtype=term.dtype, device=term.device)
            betas[j] = zero.index_copy(2, u, term).view(D, K, *self.shapes[j])
        return alphas, betas

    def branch(self, dom: Domains, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The neuron to split in each domain (D,) (an index into the concatenated unstable neurons) and
        whether it has one (D,): filtered smart branching (De Palma et al. 2021) when ``k`` > 1 — the ``k``
        best-scored candidates of each domain are tried, both children of each bounded by one backward pass
        with the domain's α and β (no optimisation), and the candidate whose worse child is best wins; the
        best score alone when ``k`` ≤ 1."""
        best, neuron = dom.scores.max(1)
        ok = best > 0
        k = min(k, dom.scores.shape[1])
        if k <= 1:
            return neuron, ok
        D = len(dom)
        score, cand = dom.scores.topk(k, dim=1)  # (D, k)
        n = 2 * D * k

        def rep(t: torch.Tensor) -> torch.Tensor:  # (D, ...) -> (2·D·k, ...): [active children; inactive ones]
            return t.repeat_interleave(k, 0).repeat(2, *[1] * (t.dim() - 1))

        flat = cand.reshape(-1)
        split, offset = {}, 0
        for j in [j for j in self.relus if j in dom.split]:
            sj = rep(dom.split[j]).clone()
            rows = ((flat >= offset) & (flat < offset + sj.shape[1])).nonzero().squeeze(1)
            sj[rows, flat[rows] - offset] = 1
            sj[rows + D * k, flat[rows] - offset] = -1
            split[j] = sj
            offset += sj.shape[1]
        with torch.no_grad():
            pre, base, relax = self._domain_pre(split, n)
            alphas, betas = self._full({j: rep(t) for j, t in dom.alpha.items()},
                                       {j: rep(t) for j, t in dom.beta.items()}, split, base)
            box = Box(self.lo.expand(n, *self.lo.shape[1:]), self.hi.expand(n, *self.hi.shape[1:]))
            low = _backward(self.graph, self.graph.output, self.C.expand(n, -1, -1), self.shapes, pre, box,
                            self.d.expand(n, -1), alphas, betas, relax=relax)
        val = low.max(1).values.view(2, D, k)
        worse = torch.minimum(val[0], val[1]).nan_to_num(nan=-math.inf)
        worse = torch.where(score > 0, worse, torch.full_like(worse, -math.inf))
        pick = worse.argmax(1)
        return cand.gather(1, pick[:, None]).squeeze(1), ok

    def _scores(self, record: dict, pre: dict[int, Bounds], split: dict[int, torch.Tensor]) -> torch.Tensor:
        """Branching scores (D, U) of the root-unstable neurons, BaBSR-like: the loss that the upper
        relaxation's intercept ``−u·l/(u−l)`` causes in the bound (coefficient on the ReLU's output times the
        intercept, summed over rows), plus a small term for the lower relaxation so that every neuron unstable
        in the domain scores above 0; −1 for neurons split or stable in the domain."""
        out = []
        for j in self.relus:
            u = self.unstable[j]
            if len(u) == 0:
                continue
            lam = record[j].flatten(2)[:, :, u]
            lo, up = pre[j].lower.flatten(1)[:, u], pre[j].upper.flatten(1)[:, u]
            live = (lo < 0) & (up > 0) & (split[j] == 0)
            intercept = relu_relaxation(Bounds(lo, up), self.leak[j])[2].unsqueeze(1)  # the chord's intercept
            sc = (lam.clamp(max=0).neg() * intercept).sum(1)
            sc = sc + 1e-3 * (lam.abs() * torch.minimum(up, -lo).clamp(min=0).unsqueeze(1)).sum(1) + 1e-12
            out.append(torch.where(live, sc, torch.full_like(sc, -1.0)))
        if not out:  # no unstable ReLU: nothing to split
            return torch.full((record[-1].shape[0], 1), -1.0, dtype=record[-1].dtype, device=record[-1].device)
        return torch.cat(out, 1)


class ReluBab:
    """A resumable branch and bound of one clause: :meth:`run` searches for up to ``seconds`` more and returns
    the result so far; while that is 'unknown' and :attr:`finished` is False, a later :meth:`run` goes on from
    the open domains where the last one stopped (so that a caller can share its time between several clauses,
    round robin, and stop at the first counterexample). Arguments as for :func:`bab`."""

    def __init__(self, model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor | None = None, batch: int = 256,
                 iterations: int = 4, lr: float = 0.1, max_domains: int = 100_000,
                 pre: dict[int, Bounds] | None = None, attack_points: int = 8, attack_steps: int = 10, fsb: int = 1):
        t0 = time.perf_counter()
        C = torch.as_tensor(C)
        d = torch.zeros(C.shape[0], dtype=C.dtype, device=C.device) if d is None else torch.as_tensor(d).reshape(-1)
        if C.dim() != 2 or d.shape != (C.shape[0],):
            raise SpecError(f"C must be (K, n_out) and d (K,), got {tuple(C.shape)} and {tuple(d.shape)}")
        self.prob = prob = _Problem(model, input_set, C, d, pre)
        self.batch, self.iterations, self.lr, self.max_domains = batch, iterations, lr, max_domains
        self.attack_points, self.attack_steps, self.fsb = attack_points, attack_steps, fsb
        self.js = [j for j in prob.relus if len(prob.unstable[j])]
        self.n_bounded = 0
        self.worst_done = math.inf  # the smallest bound among the domains proved (all positive)
        self.open: Domains | None = None  # None: the root is not bounded yet
        self.result: BabResult | None = None  # set once decided or given up for good
        self.per_domain: float | None = None  # seconds per bounded child, measured on the last round
        self.seconds = time.perf_counter() - t0

    @property
    def finished(self) -> bool:
        """Decided, or stopped for good (domain budget, a fully split domain left undecided)."""
        return self.result is not None

    def _result(self, verdict: str, x=None, value=math.inf) -> BabResult:
        lows = self.open.value if self.open is not None else torch.empty(0)
        if verdict == "falsified":
            bound = -math.inf
        else:
            bound = min(self.worst_done, float(lows.min())) if len(lows) else self.worst_done
            if self.open is None:
                bound = -math.inf
        return BabResult(verdict, bound, value, x, self.n_bounded, self.seconds)

    def _bound(self, split, alpha, beta, parent=None) -> Domains | _Counterexample:
        """Bound the domains; drop the proved ones; a counterexample among the candidates ends the search."""
        prob = self.prob
        low, alpha, beta, scores, xs = prob.bound(split, alpha, beta, self.iterations, self.lr)
        if parent is not None:
            low = torch.maximum(low, parent)  # a child's set lies in its parent's
        self.n_bounded += len(low)
        value = low.max(1).values  # a domain is proved when one of its rows is
        with torch.no_grad():
            v = prob.clause_value(xs)
        if not (v <= 0).any():  # a short PGD from the most promising candidates
            top = v.argsort()[:self.attack_points]
            box = Box(prob.lo.expand(len(top), *prob.lo.shape[1:]), prob.hi.expand(len(top), *prob.hi.shape[1:]))
            xs, v = pgd_minimize(prob.clause_value, box, self.attack_steps, 1, start=xs[top])
        for k in v.argsort()[: int((v <= 0).sum())].tolist():
            if prob.violates(xs[k:k + 1]):
                return _Counterexample(xs[k:k + 1].detach(), float(v[k]))
        proved = value > 0
        if proved.any():
            self.worst_done = min(self.worst_done, float(value[proved].min()))
        return Domains(split, alpha, beta, scores, low).take(~proved)

    def run(self, seconds: float) -> BabResult:
        """Search for up to ``seconds`` more (at least one round, made smaller than :attr:`batch` when the last
        round's time per domain says a full one would not fit); the result so far."""
        if self.result is not None:
            return self.result
        t0 = time.perf_counter()
        prob, K = self.prob, self.prob.C.shape[1]

        def done(verdict: str, x=None, value=math.inf, final=True) -> BabResult:
            self.seconds += time.perf_counter() - t0
            r = self._result(verdict, x, value)
            if final:
                self.result = r
            return r

        if self.open is None:
            dtype, dev = prob.lo.dtype, prob.lo.device
            split = {j: torch.zeros(1, len(prob.unstable[j]), dtype=torch.int8, device=dev) for j in self.js}
            alpha = {j: relu_relaxation(prob.pre[j])[0].flatten()[prob.unstable[j]].expand(1, K, -1).clone()
                     for j in self.js}
            beta = {j: torch.zeros(1, K, len(prob.unstable[j]), dtype=dtype, device=dev) for j in self.js}
            out = self._bound(split, alpha, beta)
            if isinstance(out, _Counterexample):
                return done("falsified", out.x, out.value)
            self.open = out
            rounds = 1  # the root's bound counts as this call's round
        else:
            rounds = 0
        while True:
            value = self.open.value
            if len(value) == 0:
                return done("verified")
            if len(value) > self.max_domains:
                return done("unknown")
            if rounds and time.perf_counter() - t0 > seconds:
                return done("unknown", final=False)
            rounds += 1
            size = self.batch
            if self.per_domain is not None:  # a round of `size` parents bounds 2·size children
                fits = int((seconds - (time.perf_counter() - t0)) / (2 * self.per_domain))
                size = max(min(self.batch, fits), min(self.batch, 8))
            order = value.argsort()
            now, rest = self.open.take(order[:size]), self.open.take(order[size:])
            t_round = time.perf_counter()
            neuron, ok = prob.branch(now, self.fsb)
            if not ok.all():  # a domain with every unstable neuron split or stable stays undecided
                return done("unknown")
            # children: the chosen neuron active (+1) in the first half, inactive (−1) in the second
            child_split, offset, D = {}, 0, len(now)
            for j in self.js:
                sj = now.split[j].repeat(2, 1)
                rows = ((neuron >= offset) & (neuron < offset + sj.shape[1])).nonzero().squeeze(1)
                sj[rows, neuron[rows] - offset] = 1
                sj[rows + D, neuron[rows] - offset] = -1
                child_split[j] = sj
                offset += sj.shape[1]
            children = self._bound(child_split, {j: t.repeat(2, 1, 1) for j, t in now.alpha.items()},
                                   {j: t.repeat(2, 1, 1) for j, t in now.beta.items()}, now.low.repeat(2, 1))
            if isinstance(children, _Counterexample):
                return done("falsified", children.x, children.value)
            self.per_domain = (time.perf_counter() - t_round) / (2 * len(now))
            self.open = rest + children


def bab(model, input_set: InputSet, C: torch.Tensor, d: torch.Tensor | None = None, time_limit: float = 60.0,
        batch: int = 256, iterations: int = 4, lr: float = 0.1, max_domains: int = 100_000,
        pre: dict[int, Bounds] | None = None, attack_points: int = 8, attack_steps: int = 10,
        fsb: int = 1) -> BabResult:
    """Decide ``min_{x in set} max_k (C·f(x) + d)_k > 0`` (one clause; C: (K, n_out), d: (K,)) for one input
    set by branch and bound. ``batch`` domains are split per round (2·batch bounded at once); each bound takes
    ``iterations`` steps of Adam on α and β, warm-started from the parent's (on one CPU core, 4 steps on 512
    domains per round decided more than 20 steps on 128: more domains beat tighter ones on the MLPs of
    VNN-COMP's mnist_fc); ``pre`` are the root's intermediate bounds (α-CROWN's by default).
    The minimisers of the new domains' linear bounds are tried as counterexamples, and the ``attack_points``
    best of them are improved by ``attack_steps`` of PGD.
    Stops at ``time_limit`` seconds or ``max_domains`` domains in memory with 'unknown'."""
    t0 = time.perf_counter()
    search = ReluBab(model, input_set, C, d, batch, iterations, lr, max_domains, pre, attack_points, attack_steps,
                      fsb)
    return search.run(time_limit - (time.perf_counter() - t0))
