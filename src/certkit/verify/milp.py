"""Exact verification of ReLU networks by mixed-integer linear programming (Tjeng, Xiao & Tedrake 2019).

Every node's output is a vector of LP variables; affine ops (Linear, convolutions, Normalize/BN, elementwise
affine maps, AvgPool) are equality rows with their explicit sparse matrices, Flatten/Unflatten/Reindex rename
variables, Add sums them. A LeakyReLU ``max(z, a·z)`` is ``a·z + (1 − a)·relu(z)``, with relu(z) encoded as
below. A ReLU ``y = relu(z)`` with pre-activation bounds ``l < 0 < u`` is encoded exactly with one binary ``a``:

    y ≥ z,  y ≥ 0,  y ≤ u·a,  y ≤ z − l·(1 − a)

or, when the binary budget ``max_binaries`` is spent, by its triangle relaxation ``y ≤ u(z − l)/(u − l)``
(COLT §6 gives binaries to the ReLUs after the last convolution and the triangle LP to the rest; binaries go
to later layers first and, within a layer, to the largest triangles). Stable ReLUs are exact without binaries.
The tighter the pre-activation bounds (CROWN, α-CROWN), the smaller the big-M constants and the faster HiGHS.

The objective ``c·output + d`` is minimised by HiGHS with a cutoff at ``threshold``: the search stops at the
first solution below it (a candidate counterexample, re-checked by a float64 forward pass) and reports the
problem infeasible when none exists (verified). A time limit gives ``unknown`` with HiGHS's dual bound.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from certkit import graph as g
from certkit.bounds.interval import Bounds, interval_bounds
from certkit.bounds.relax import relu_relaxation
from certkit.specs import Box, InputSet, SpecError

try:  # pragma: no cover - import guard
    import highspy
except ImportError:  # pragma: no cover
    highspy = None


@dataclass
class MilpResult:
    """``verdict``: 'verified' (min > threshold), 'falsified' (``x`` attains ``value`` ≤ threshold, checked in
    float64) or 'unknown' (time limit); ``bound``: a proven lower bound on the minimum (−inf if none)."""

    verdict: str
    bound: float
    value: float
    x: torch.Tensor | None
    seconds: float
    status: str


def _op_matrix(op: g.Op, in_shape: tuple[int, ...], dtype=torch.float64, chunk: int = 1024) -> sp.csr_matrix:
    """The explicit sparse matrix of a linear op (bias dropped), built by applying it to unit vectors."""
    n = math.prod(in_shape)
    cols = []
    with torch.no_grad():
        for s in range(0, n, chunk):
            k = min(chunk, n - s)
            eye = torch.zeros(k, n, dtype=dtype)
            eye[torch.arange(k), torch.arange(s, s + k)] = 1
            x = eye.view(k, *in_shape)
            if isinstance(op, g.AffineOp):
                out = op.apply(x, op.weight.detach().to(dtype), None)
            else:
                out = op.forward(x)
            cols.append(sp.csr_matrix(out.reshape(k, -1).numpy()))
    return sp.vstack(cols).T.tocsr()


_SMALL = 1e-8  # matrix entries below this are not passed to HiGHS (its own cut-off, small_matrix_value, is 1e-9)
_HIGHS_SMALL = 1e-9  # HiGHS's small_matrix_value, set explicitly so that _SMALL stays above it
_PRE_SLACK = (1e-6, 1e-5)
  # float32 ``pre`` bounds are widened by abs·(1 + |bound|) + rel·(IBP width)
_MAX_MAGNITUDE = 1e6  # beyond this (variable bounds, coefficients), the MILP verifies nothing (see MilpEncoding)


def _relax_tiny(rows, cols, vals, row_lo, row_up, col_lo, col_up):
    """HiGHS silently drops matrix entries below its small_matrix_value; a row without them can contradict the
    column bounds (measured: a satisfiable MILP reported infeasible, i.e. 'verified'). Remove entries below _SMALL
    here and widen their rows by Σ|a_ij|·max(|l_j|, |u_j|) instead: a sound relaxation. Returns the kept entries
    and the widened row bounds."""
    tiny = np.abs(vals) < _SMALL
    if not tiny.any():
        return rows, cols, vals, row_lo, row_up
    reach = np.maximum(np.abs(col_lo), np.abs(col_up))[cols[tiny]]
    delta = np.bincount(rows[tiny], np.abs(vals[tiny]) * reach, minlength=len(row_lo))
    keep = ~tiny
    return rows[keep], cols[keep], vals[keep], row_lo - delta, row_up + delta


OPS = dict.fromkeys((g.Input, g.Flatten, g.Unflatten, g.Reindex, g.AffineOp, g.AvgPool2d, g.Add, g.PiecewiseLinear))
"""The op types the MILP encodes (one branch each in :class:`MilpEncoding`)."""


class MilpEncoding:
    """The MILP of one input of ``model`` over ``input_set`` (batch of one), reusable across objectives.

    ``pre``: optional tighter pre-activation bounds {node index: Bounds} (e.g. from CROWN), intersected with
    IBP's. ``max_binaries``: at most this many binaries (None: every unstable ReLU is exact). ``upto``: encode
    the network only up to that node, which is then the "output" the objectives read (an intermediate layer's
    neurons, e.g. to tighten their bounds).
    """

    def __init__(self, model, input_set: InputSet, pre: dict[int, Bounds] | None = None,
                 max_binaries: int | None = None, upto: int | None = None):
        if highspy is None:  # pragma: no cover
            raise ImportError("MILP verification needs highspy: pip install highspy")
        if input_set.batch_size != 1:
            raise ValueError(f"MilpEncoding takes one input, got a batch of {input_set.batch_size}")
        if not input_set.is_box:
            raise SpecError("the MILP encodes box-shaped input sets (L∞ balls, boxes); an L2/L1 ball is not one")
        for node in g.to_graph(model).nodes:
            g.rule_for(OPS, node.op, "the MILP encoding", node.name)
        self.model = model
        # The MILP is solved in float64: its variable bounds must hold in float64 too. Bounds computed in float32
        # can cut off the network's own values by round-off (measured: 1.3e-8 on an IBP-trained MLP, above the
        # solver's feasibility tolerance), and then HiGHS reports a satisfiable property as infeasible, i.e.
        # "verified". So IBP runs on a float64 copy, and every bound gets a slack (more for float32 ``pre``).
        self.graph = graph = g.to_graph(copy.deepcopy(model).to(torch.float64))
        self.input_set = input_set
        box = Box(input_set.lower.detach().double(), input_set.upper.detach().double())
        with torch.no_grad():
            _, ibp = interval_bounds(graph, box, return_all=True)
            vals = graph.forward(input_set.x.detach().double(), return_all=True)
        shapes = [tuple(v.shape[1:]) for v in vals]
        bounds = []
        for i, b in enumerate(ibp):
            lo, up = b.lower.detach().reshape(-1), b.upper.detach().reshape(-1)
            if i > 0:  # the input box is exact
                lo, up = lo - 1e-9 * lo.abs(), up + 1e-9 * up.abs()
            if pre is not None and i in pre and i > 0:
                p_lo, p_up = pre[i].lower.detach().double().reshape(-1), pre[i].upper.detach().double().reshape(-1)
                slack = _PRE_SLACK[0] * (1 + torch.maximum(p_lo.abs(), p_up.abs())) + _PRE_SLACK[1] * (up - lo)
                lo, up = torch.maximum(lo, p_lo - slack), torch.minimum(up, p_up + slack)
            centre = vals[i].detach().reshape(-1)  # the network's own value at the centre must stay feasible
            lo, up = torch.minimum(lo, centre), torch.maximum(up, centre)
            bounds.append((lo.numpy(), up.numpy()))
        self.n_cols = 0
        col_lo: list[np.ndarray] = []
        col_up: list[np.ndarray] = []
        integer: list[np.ndarray] = []
        row_lo: list[np.ndarray] = []
        row_up: list[np.ndarray] = []
        entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (row, col, value), rows numbered locally
        self.n_rows = 0

        def new_cols(lo: np.ndarray, up: np.ndarray, is_int: bool = False) -> np.ndarray:
            idx = np.arange(self.n_cols, self.n_cols + len(lo))
            self.n_cols += len(lo)
            col_lo.append(np.asarray(lo, float))
            col_up.append(np.asarray(up, float))
            integer.append(np.full(len(lo), is_int))
            return idx

        def add_rows(r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, up: np.ndarray) -> None:
            entries.append((r + self.n_rows, c, v))
            row_lo.append(np.asarray(lo, float))
            row_up.append(np.asarray(up, float))
            self.n_rows += len(lo)

        # which unstable ReLUs get binaries: later layers first, larger triangles first
        last = graph.output if upto is None else upto
        relus = [i for i, n in enumerate(graph.nodes) if isinstance(n.op, g.PiecewiseLinear) and i <= last]
        budget = math.inf if max_binaries is None else max_binaries
        binary: dict[int, np.ndarray] = {}
        for i in reversed(relus):
            lo, up = bounds[graph.nodes[i].inputs[0]]
            unstable = np.nonzero((lo < 0) & (up > 0) & (-lo >= _SMALL) & (up >= _SMALL))[0]  # else triangle
            area = -lo[unstable] * up[unstable] / (up[unstable] - lo[unstable])
            take = unstable[np.argsort(-area, kind="stable")][: int(min(budget, len(unstable)))]
            budget -= len(take)
            mask = np.zeros(len(lo), bool)
            mask[take] = True
            binary[i] = mask
        self.n_binaries = int(sum(m.sum() for m in binary.values()))

        var: list[np.ndarray] = []
        for i, node in enumerate(graph.nodes[:last + 1]):
            op = node.op
            lo, up = bounds[i]
            if isinstance(op, g.Input):
                var.append(new_cols(input_set.lower.double().reshape(-1).numpy(),
                                    input_set.upper.double().reshape(-1).numpy()))
            elif isinstance(op, (g.Flatten, g.Unflatten)):
                var.append(var[node.inputs[0]])
            elif isinstance(op, (g.AffineOp, g.AvgPool2d)):
                j = node.inputs[0]
                M = _op_matrix(op, shapes[j]).tocoo()
                with torch.no_grad():  # the op's value at 0 is its bias
                    b = op.forward(torch.zeros(1, *shapes[j], dtype=vals[j].dtype)).double().reshape(-1).numpy()
                z = new_cols(lo, up)
                n = len(z)
                # z − M·x = b
                add_rows(np.concatenate([np.arange(n), M.row]), np.concatenate([z, var[j][M.col]]),
                         np.concatenate([np.ones(n), -M.data]), b, b)
                var.append(z)
            elif isinstance(op, g.Add):
                z = new_cols(lo, up)
                n = len(z)
                r = np.arange(n)
                a, c = (var[k] for k in node.inputs)
                add_rows(np.concatenate([r, r, r]), np.concatenate([z, a, c]),
                         np.concatenate([np.ones(n), -np.ones(n), -np.ones(n)]), np.zeros(n), np.zeros(n))
                var.append(z)
            elif isinstance(op, g.Reindex):
                var.append(var[node.inputs[0]][op.index.numpy()])
            elif isinstance(op, g.PiecewiseLinear):
                j = node.inputs[0]
                zl, zu = bounds[j]
                zv = var[j]
                y = np.empty(len(zv), dtype=np.int64)
                active, dead = zl >= 0, zu <= 0
                y[active] = zv[active]
                if dead.any():
                    y[dead] = new_cols(np.zeros(dead.sum()), np.zeros(dead.sum()))
                for exact in (True, False):
                    sel = np.nonzero(~active & ~dead & (binary[i] if exact else ~binary[i]))[0]
                    if len(sel) == 0:
                        continue
                    l, u, zs = zl[sel], zu[sel], zv[sel]
                    ys = new_cols(np.zeros(len(sel)), u)
                    y[sel] = ys
                    k, r = len(sel), np.arange(len(sel))
                    # y − z ≥ 0
                    add_rows(np.concatenate([r, r]), np.concatenate([ys, zs]),
                             np.concatenate([np.ones(k), -np.ones(k)]), np.zeros(k), np.full(k, np.inf))
                    if exact:
                        a = new_cols(np.zeros(k), np.ones(k), is_int=True)
                        # y − u·a ≤ 0 ;  y − z − l·a ≤ −l
                        add_rows(np.concatenate([r, r]), np.concatenate([ys, a]), np.concatenate([np.ones(k), -u]),
                                 np.full(k, -np.inf), np.zeros(k))
                        add_rows(np.concatenate([r, r, r]), np.concatenate([ys, zs, a]),
                                 np.concatenate([np.ones(k), -np.ones(k), -l]), np.full(k, -np.inf), -l)
                    else:
                        _, s, c = (t.numpy() for t in relu_relaxation(Bounds(torch.from_numpy(l), torch.from_numpy(u))))
                        add_rows(np.concatenate([r, r]), np.concatenate([ys, zs]), np.concatenate([np.ones(k), -s]),
                                 np.full(k, -np.inf), c)  # y − s·z ≤ c, the chord
                slope = op.negative_slope
                if slope:  # LeakyReLU: v = a·z + (1 − a)·relu(z), one equality row per neuron
                    n = len(zv)
                    v = new_cols(lo, up)
                    r = np.arange(n)
                    add_rows(np.concatenate([r, r, r]), np.concatenate([v, zv, y]),
                             np.concatenate([np.ones(n), np.full(n, -slope), np.full(n, slope - 1)]),
                             np.zeros(n), np.zeros(n))
                    y = v
                var.append(y)
            else:  # pragma: no cover - checked against OPS above
                raise g.UnsupportedOpError(f"the MILP encoding has no rule for {op!r} (node '{node.name}')")
        self._cols = (np.concatenate(col_lo), np.concatenate(col_up), np.concatenate(integer))
        *self._entries, r_lo, r_up = _relax_tiny(*(np.concatenate([e[k] for e in entries]) for k in range(3)),
                                                 np.concatenate(row_lo), np.concatenate(row_up), *self._cols[:2])
        self._entries = tuple(self._entries)
        self._rows = (r_lo, r_up)
        self.var = var
        self.last = last
        self.out = var[last]
        self.out_bounds = bounds[last]
        # a point of the set (the centre, clamped into the box) and its float64 output: a property it violates is
        # falsified without a solve, and no answer of the solver can contradict it
        self.centre = torch.minimum(torch.maximum(input_set.x.detach().double(), box.lower), box.upper)
        with torch.no_grad():
            self.centre_out = graph.forward(self.centre, return_all=True)[last].reshape(-1).numpy()
        # HiGHS's tolerances are absolute: with numbers beyond _MAX_MAGNITUDE they no longer separate
        # feasible from infeasible (measured: weights of 1e9 made satisfiable properties "infeasible")
        col_lo, col_up = self._cols[0], self._cols[1]
        finite = np.concatenate([col_lo[np.isfinite(col_lo)], col_up[np.isfinite(col_up)], self._entries[2],
                                 r_lo[np.isfinite(r_lo)], r_up[np.isfinite(r_up)]])
        self.magnitude = float(np.abs(finite).max()) if finite.size else 0.0

    def minimize(self, c: torch.Tensor, d: float = 0.0, threshold: float = 0.0, time_limit: float = 60.0,
                 stop_at_sign: bool = True, tolerance: float = 1e-5) -> MilpResult:
        """Minimise ``c·output + d``. With ``stop_at_sign`` the search ends as soon as the sign relative to
        ``threshold`` is decided; 'verified' needs the minimum above ``threshold + tolerance`` (solver
        tolerances are not proofs)."""
        return self.minimize_property(c.reshape(1, -1), torch.tensor([float(d)]), None, threshold, time_limit,
                                      stop_at_sign, tolerance)

    def minimize_property(self, C: torch.Tensor, d: torch.Tensor, clauses: torch.Tensor | None = None,
                          threshold: float = 0.0, time_limit: float = 60.0, stop_at_sign: bool = True,
                          tolerance: float = 1e-5, row_lower: torch.Tensor | None = None) -> MilpResult:
        """Minimise ``min_q max_{k∈q} (C·output + d)_k`` over the set in one MILP (≤ threshold: a violation).

        Each clause q gets ``w_q ≥ row_k`` for its rows; with several clauses, ``z ≥ w_q − M_q(1 − s_q)``,
        ``Σ s_q = 1`` with binaries s_q selects the smallest (big-M from the output bounds; ``row_lower``
        optionally gives tighter lower bounds per row). One solve decides a whole margin property, instead of
        one solve per row.

        Soundness rules: ``row_lower`` (computed in the model's dtype, e.g. float32 CROWN) is widened and kept
        below the rows' value at the set's centre; "infeasible" (nothing below the cut-off) is a proof only when
        a second solve *without* ``row_lower`` agrees, so that no bound added here can cause it; with
        ``stop_at_sign`` the reported bound is at most the cut-off (a dual bound after pruning at the cut-off
        is not a bound on the minimum); the set's centre is tried first (a violation there needs no solve);
        an encoding with numbers beyond ``_MAX_MAGNITUDE`` answers 'unknown' rather than 'verified'.
        """
        t0 = time.perf_counter()
        C64 = C.detach().double().reshape(C.shape[0], -1).numpy()
        d64 = d.detach().double().reshape(-1).numpy()
        cl = np.arange(C64.shape[0]) if clauses is None else np.asarray(clauses).reshape(-1)
        at_centre = float(_exact_objective(self.graph, self.centre, C64, d64, cl, self.last))
        if at_centre <= threshold:
            return MilpResult("falsified", -math.inf, at_centre, self.centre.clone(), time.perf_counter() - t0,
                              "centre")
        lo_o, up_o = self.out_bounds
        row_lo = np.minimum(C64 * lo_o, C64 * up_o).sum(1) + d64
        row_up = np.maximum(C64 * lo_o, C64 * up_o).sum(1) + d64
        row_lo_cut = None
        if row_lower is not None:  # computed in the model's dtype: widened, and never above a value it bounds
            rl = row_lower.detach().double().reshape(-1).numpy()
            rl = rl - _PRE_SLACK[0] * (1 + np.abs(rl)) - _PRE_SLACK[1] * (row_up - row_lo)
            row_lo_cut = np.minimum(np.maximum(row_lo, rl), C64 @ self.centre_out + d64)
        deadline = t0 + time_limit  # HiGHS can overrun its own limit inside sub-MIPs: a callback stops it there
        # HiGHS's tolerances are absolute, its errors grow with the encoding's numbers: measured 0.003 on an
        # objective of 1790 with variable bounds up to 6e5 ("Optimal", a bound above a real point's value)
        tolerance = tolerance + 1e-6 * self.magnitude
        cut = threshold + tolerance

        def stop_when_late(event) -> None:
            if time.perf_counter() > deadline:
                event.interrupt()

        def solve(lp: highspy.HighsLp, seed: int, presolve: bool = True) -> highspy.Highs:
            # HiGHS's default feasibility tolerances: tighter ones (1e-8) made presolve call a feasible LP
            # infeasible (found by the fuzz campaign); looser is the safe side for a proof of infeasibility, and
            # every solution is re-checked exactly anyway
            h = _new_highs()
            h.setOptionValue("output_flag", False)
            left = max(deadline - time.perf_counter(), 0.01)
            h.setOptionValue("time_limit", float(left))
            # HiGHS's presolve cannot be interrupted (neither its time limit, its callbacks nor cancelSolve reach
            # it): measured 14 s on 1.9 M nonzeros. It is skipped when it would not fit in half the time left
            # (no presolve is the numerically safer side; the confirming solve never uses it)
            presolve = presolve and _PRESOLVE_S_PER_NONZERO * len(lp.a_matrix_.value_) <= left / 2
            h.setOptionValue("small_matrix_value", _HIGHS_SMALL)
            h.setOptionValue("random_seed", seed)
            if not presolve:
                h.setOptionValue("presolve", "off")
            h.passModel(lp)
            h.cbMipInterrupt.subscribe(stop_when_late)
            h.cbSimplexInterrupt.subscribe(stop_when_late)
            if stop_at_sign:
                h.setOptionValue("objective_bound", cut)
                h.setOptionValue("mip_max_improving_sols", 1)
            h.run()
            return h

        lp, has_int = self._property_lp(C64, d64, cl, row_lo if row_lo_cut is None else row_lo_cut, row_up)
        if has_int and _MIP_START_S_PER_NONZERO * len(lp.a_matrix_.value_) > deadline - time.perf_counter():
            return MilpResult("unknown", -math.inf, at_centre, None, time.perf_counter() - t0,
                              "no time left for a solve")
        h = solve(lp, 0)
        if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
            # "Infeasible" is the proof, so it must not rest on one search nor on bounds added here: a second
            # solve, on another random path, without presolve (where HiGHS's numerical slips were found) and
            # without ``row_lower``, has to agree (HiGHS was measured to call a feasible MILP infeasible, see
            # _relax_tiny; float32 row bounds made an empty column, see above)
            h = solve(self._property_lp(C64, d64, cl, row_lo, row_up)[0] if row_lo_cut is not None else lp, 1,
                      presolve=False)
        status = h.getModelStatus()
        info = h.getInfo()
        seconds = time.perf_counter() - t0
        name = h.modelStatusToString(status)
        # HiGHS's answers hold up to its tolerances: a reported bound keeps half of ``tolerance`` in reserve, so
        # that a verified minimum is still reported above ``threshold``
        reserve = tolerance / 2
        trusted = self.magnitude <= _MAX_MAGNITUDE
        if status == highspy.HighsModelStatus.kInfeasible:  # nothing below the cutoff
            if not trusted:
                return MilpResult("unknown", -math.inf, at_centre, None, seconds, f"{name} (badly scaled)")
            return MilpResult("verified", cut - reserve, math.inf, None, seconds, name)
        optimal = status == highspy.HighsModelStatus.kOptimal
        has_sol = info.primal_solution_status == 2
        value = info.objective_function_value if has_sol else math.inf
        dual = info.mip_dual_bound if has_int else (value if optimal else -math.inf)
        dual = dual if math.isfinite(dual) else -math.inf
        # what is proven: the dual bound, but after pruning at the cut-off only up to the cut-off
        bound = min((min(dual, cut) if stop_at_sign else dual) - reserve if trusted else -math.inf, at_centre)
        if has_sol:
            x = torch.tensor(np.asarray(h.getSolution().col_value)[self.var[0]]).view_as(self.input_set.x)
            x = torch.minimum(torch.maximum(x, self.input_set.lower.double()), self.input_set.upper.double())
            value = float(_exact_objective(self.graph, x, C64, d64, cl, self.last))
            bound = min(bound, value)  # a point of the set attains ``value``: the minimum is not above it
            if value <= threshold:
                return MilpResult("falsified", bound, value, x, seconds, name)
        if dual > cut and trusted:
            return MilpResult("verified", bound, value, None, seconds, name)
        return MilpResult("unknown", bound, value, None, seconds, name)

    def _property_lp(self, C64: np.ndarray, d64: np.ndarray, cl: np.ndarray, row_lo: np.ndarray,
                     row_up: np.ndarray) -> tuple[highspy.HighsLp, bool]:
        """The encoding plus the property's rows (see :meth:`minimize_property`); returns (lp, has integers)."""
        K = C64.shape[0]
        qs = np.unique(cl)
        col_lo, col_up, is_int = (list(x) for x in ([self._cols[0]], [self._cols[1]], [self._cols[2]]))
        r_idx, c_idx, vals = [self._entries[0]], [self._entries[1]], [self._entries[2]]
        rlo, rup = [self._rows[0]], [self._rows[1]]
        n_col, n_row = len(self._cols[0]), len(self._rows[0])
        wl = np.array([row_lo[cl == q].max() for q in qs])
        wu = np.array([row_up[cl == q].max() for q in qs])
        w = np.arange(n_col, n_col + len(qs))
        col_lo.append(wl), col_up.append(wu), is_int.append(np.zeros(len(qs), bool))
        n_col += len(qs)
        for k in range(K):  # w_q − C_k·y ≥ d_k
            q = int(np.searchsorted(qs, cl[k]))
            nz = np.nonzero(C64[k])[0]
            r_idx.append(np.full(len(nz) + 1, n_row))
            c_idx.append(np.concatenate([[w[q]], self.out[nz]]))
            vals.append(np.concatenate([[1.0], -C64[k, nz]]))
            rlo.append(np.array([d64[k]])), rup.append(np.array([np.inf]))
            n_row += 1
        cost = np.zeros(n_col)
        if len(qs) == 1:
            cost[w[0]] = 1.0
        else:
            z, sq = n_col, np.arange(n_col + 1, n_col + 1 + len(qs))
            col_lo.append(np.concatenate([[wl.min()], np.zeros(len(qs))]))
            col_up.append(np.concatenate([[wu.min()], np.ones(len(qs))]))
            is_int.append(np.concatenate([[False], np.ones(len(qs), bool)]))
            n_col += 1 + len(qs)
            M = wu - wl.min()
            for q in range(len(qs)):  # z − w_q − M_q·s_q ≥ −M_q
                r_idx.append(np.full(3, n_row))
                c_idx.append(np.array([z, w[q], sq[q]]))
                vals.append(np.array([1.0, -1.0, -M[q]]))
                rlo.append(np.array([-M[q]])), rup.append(np.array([np.inf]))
                n_row += 1
            r_idx.append(np.full(len(qs), n_row))  # Σ s_q = 1
            c_idx.append(sq)
            vals.append(np.ones(len(qs)))
            rlo.append(np.array([1.0])), rup.append(np.array([1.0]))
            n_row += 1
            cost = np.zeros(n_col)
            cost[z] = 1.0
        ri, ci, va, rlo_all, rup_all = _relax_tiny(np.concatenate(r_idx), np.concatenate(c_idx), np.concatenate(vals),
                                                   np.concatenate(rlo), np.concatenate(rup),
                                                   np.concatenate(col_lo), np.concatenate(col_up))
        A = sp.csc_matrix((va, (ri, ci)), shape=(n_row, n_col))
        A.sum_duplicates()
        A.eliminate_zeros()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n_col, n_row
        lp.col_cost_ = cost
        lp.col_lower_, lp.col_upper_ = np.concatenate(col_lo), np.concatenate(col_up)
        lp.row_lower_, lp.row_upper_ = rlo_all, rup_all
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        integer = np.concatenate(is_int)
        if integer.any():
            lp.integrality_ = [highspy.HighsVarType.kInteger if t else highspy.HighsVarType.kContinuous
                               for t in integer]
        return lp, bool(integer.any())


_BANNER_SHOWN = [False]
_PRESOLVE_S_PER_NONZERO = 5e-6  # HiGHS presolve time per constraint-matrix nonzero, measured on this CPU (7.5e-6)
# HiGHS's MIP set-up before its first interruptible point, per nonzero: 3.3 s on COLT's MNIST net's 1.87 M nonzeros
# (1.8e-6 on this CPU); a solve is not started when even that would not fit in the time left
_MIP_START_S_PER_NONZERO = 1e-6


def _new_highs() -> highspy.Highs:
    """A HiGHS instance; the first one of the process is made with the C-level stdout closed, so that HiGHS's
    copyright banner does not land in the middle of a progress bar or a results table."""
    if _BANNER_SHOWN[0]:
        return highspy.Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN[0] = True
    return h


def _exact_objective(graph: g.Graph, x: torch.Tensor, C: np.ndarray, d: np.ndarray, clauses: np.ndarray,
                     node: int) -> float:
    """``min_q max_{k∈q} (C·f(x) + d)_k`` with the encoding's float64 graph of the model (f: node ``node``)."""
    with torch.no_grad():
        out = graph.forward(x.to(torch.float64), return_all=True)[node]
        rows = torch.tensor(C) @ out.reshape(-1) + torch.tensor(d)
    return min(float(rows[torch.tensor(clauses == q)].max()) for q in np.unique(clauses))


def milp_bounds(model, input_set: InputSet, C: torch.Tensor, pre: dict[int, Bounds] | None = None,
                max_binaries: int | None = None, time_limit: float = 60.0) -> list[list[MilpResult]]:
    """Minimum of each row of ``C`` (B, K, n_out) over each input's set, to optimality or the time limit per
    row (no early stop): a list per input of a MilpResult per row, ``bound`` a sound lower bound."""
    out = []
    for b in range(input_set.batch_size):
        one = _select(input_set, b)
        pb = None if pre is None else {k: Bounds(v.lower[b:b + 1], v.upper[b:b + 1]) for k, v in pre.items()}
        enc = MilpEncoding(model, one, pb, max_binaries)
        out.append([enc.minimize(C[b, k], 0.0, -math.inf, time_limit, stop_at_sign=False)
                    for k in range(C.shape[1])])
    return out


def _select(input_set: InputSet, b: int) -> InputSet:
    """The b-th input of a batched box-shaped set, as a batch of one."""
    if not input_set.is_box:
        raise SpecError("the MILP encodes box-shaped input sets (L∞ balls, boxes); an L2/L1 ball is not one")
    return Box(input_set.lower[b:b + 1], input_set.upper[b:b + 1])

