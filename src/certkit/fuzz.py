"""Property-based soundness fuzzing: random networks, input sets and specs against every bound and verifier.

Each *case* draws a network over the supported ops (Linear, Conv2d, ConvTranspose2d, BatchNorm in eval mode,
Normalize, ReLU, Sigmoid, Tanh, AvgPool2d, MaxPool2d, Flatten, residual additions), with weight scales from 0.1
to 1e9 (wide pre-activation intervals), an input set (L∞/L2/L1 balls of radius 0, 1e-9, 1e-6, 1e-3…1 or 1e3,
boxes, centres on the domain's boundary, with and without a domain), float32 or float64, and a random spec
``C·f(x) + d``. *Witnesses* are points of the set: samples plus PGD points that minimise and maximise every row
(projected onto the set), evaluated by a float64 copy of the network. Checks:

* ``bounds``: IBP, CROWN, CROWN-IBP, α-CROWN and DeepZ contain every witness's rows.
* ``verify``: the cascade (with and without its attack stage), branch and bound alone and the MILP alone never
  say "verified" where a witness violates the property; every "falsified" carries a point of the set that
  violates it in float64; no reported row bound exceeds a witnessed value.
* ``milp``: the MILP's reported bound (early-stopped at the sign and solved to optimality) never exceeds a
  witnessed value.
* ``certify``: certify() with ibp/crown/alpha/cascade never certifies an input a witness misclassifies, and its
  margin bound never exceeds a witnessed margin.

A violation is a number outside a bound by more than round-off: ``rtol·(1 + |value| + IBP width of the row)``
with rtol 1e-5 in float32 and 1e-9 in float64, plus twice the a-priori bound on the round-off of computing the
network in its own dtype at the witnesses (:func:`roundoff_bound`): bounds computed in float32 are the
real-valued network's bounds only up to float32 round-off, which grows with the magnitude of intermediate
values, not of the outputs (docs/soundness.md). :func:`run` returns counts; ``benchmarks/soundness_fuzz.py``
runs long campaigns.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.bounds.zonotope import zonotope_bounds
from certkit.errors import CertkitError
from certkit.nn import Affine, Normalize, Reindex, Residual
from certkit.specs import Box, InputSet, LinearSpec, LpBall, ball

CHECKS = ("bounds", "verify", "milp", "certify")
RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


@dataclass
class Stats:
    """Counts of a campaign: cases (one network, set and spec each), witness points, bound checks, verdicts,
    and the violations found (each a line that says what, where and by how much)."""

    cases: int = 0
    points: int = 0
    bound_checks: int = 0
    verdicts: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        v = ", ".join(f"{k} {n}" for k, n in sorted(self.verdicts.items()))
        return (f"cases {self.cases}, witness points {self.points}, bound checks {self.bound_checks}, verdicts: "
                f"{v or 'none'}; violations {len(self.violations)} ({self.seconds:.0f} s)")


# ------------------------------------------------------------------------------------------- random cases
def _init(model: nn.Module, rng: np.random.Generator, gen: torch.Generator, huge: bool) -> None:
    """Random weights (and BatchNorm statistics), each layer scaled by 10^U(−1, 1); with ``huge``, one layer by
    1e6–1e9 (pre-activation intervals far wider than float32 can resolve)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    big = int(rng.integers(len(layers))) if huge else -1
    with torch.no_grad():
        for i, m in enumerate(layers):
            scale = 10 ** rng.uniform(-1, 1) * (10 ** rng.uniform(6, 9) if i == big else 1.0)
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * scale / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)


def random_net(rng: np.random.Generator, gen: torch.Generator, relu_only: bool = False,
               small: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """A random network and its input shape (without batch). ``relu_only``: the ops branch and bound and the
    MILP encode (ReLU and LeakyReLU, no Sigmoid/Tanh/MaxPool); ``small``: few neurons, for complete verification.
    Inputs may first pass an elementwise affine map (scales of either sign) and a random permutation."""
    leaky = lambda: nn.LeakyReLU(float(rng.choice([0.01, 0.1, 0.5, 1.0])))  # noqa: E731
    acts = [nn.ReLU, nn.ReLU, leaky] if relu_only else [nn.ReLU, nn.ReLU, leaky, nn.Sigmoid, nn.Tanh]

    def act():
        return acts[int(rng.integers(len(acts)))]()

    def front(shape: tuple[int, ...]) -> list[nn.Module]:
        layers: list[nn.Module] = []
        if rng.random() < 0.2:
            scale = torch.from_numpy(rng.uniform(-2, 2, (1, *shape))).float()
            layers.append(Affine(scale, torch.from_numpy(rng.normal(0, 0.3, (1, *shape))).float()))
        if rng.random() < 0.2:
            n = int(np.prod(shape))
            layers.append(Reindex(torch.from_numpy(rng.permutation(n)), shape))
        return layers

    n_out = int(rng.integers(2, 5))
    if rng.random() < 0.5:  # MLP
        n_in = int(rng.integers(2, 6 if small else 9))
        layers: list[nn.Module] = front((n_in,))
        if rng.random() < 0.3:
            layers.append(Normalize(rng.uniform(0, 1, n_in).tolist(), rng.uniform(0.2, 2, n_in).tolist()))
        width = n_in
        for _ in range(int(rng.integers(1, 3 if small else 4))):
            w = int(rng.integers(3, 9 if small else 17))
            layers += [nn.Linear(width, w), act()]
            width = w
        layers.append(nn.Linear(width, n_out))
        model, shape = nn.Sequential(*layers), (n_in,)
    else:  # conv net, optionally with a residual block, pooling and a transposed convolution
        c, h = int(rng.integers(1, 3)), int(rng.integers(4, 7))
        ch = int(rng.integers(2, 4))
        layers = front((c, h, h))
        if rng.random() < 0.3:
            layers.append(Normalize(rng.uniform(0, 1, c).tolist(), rng.uniform(0.2, 2, c).tolist()))
        layers += [nn.Conv2d(c, ch, 3, 1, 1)]
        if rng.random() < 0.5:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(act())
        if rng.random() < 0.4:
            layers.append(Residual(nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), act()),
                                   nn.Conv2d(ch, ch, 1) if rng.random() < 0.5 else None))
        side = h
        r = rng.random()
        if r < 0.25:
            layers.append(nn.AvgPool2d(2))
            side //= 2
        elif r < 0.4 and not relu_only:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        elif r < 0.55:
            layers += [nn.ConvTranspose2d(ch, ch, 2, 2), act()]
            side *= 2
        elif not small:
            layers += [nn.Conv2d(ch, ch, 3, 2, 1), act()]
            side = (side + 1) // 2
        layers += [nn.Flatten(), nn.Linear(ch * side * side, n_out)]
        model, shape = nn.Sequential(*layers), (c, h, h)
    _init(model, rng, gen, huge=rng.random() < 0.15)
    return model.eval(), shape


def random_set(rng: np.random.Generator, gen: torch.Generator, shape: tuple[int, ...], batch: int,
               dtype: torch.dtype, box_only: bool = False) -> InputSet:
    """An L∞/L2/L1 ball or a box around random centres, some coordinates on the domain's boundary."""
    x = torch.rand((batch, *shape), generator=gen, dtype=dtype)
    edge = torch.rand(x.shape, generator=gen) < 0.15
    x = torch.where(edge, x.round(), x)
    eps = [0.0, 1e-9, 1e-6, 10 ** rng.uniform(-3, 0), 10 ** rng.uniform(-3, 0), 1e3][int(rng.integers(6))]
    domain = (0.0, 1.0) if rng.random() < 0.8 else None
    kind = rng.choice(["inf", "inf", "box"] if box_only else ["inf", "inf", "2", "1", "box"])
    if kind == "box":
        lo = x - eps * torch.rand(x.shape, generator=gen, dtype=dtype)
        up = x + eps * torch.rand(x.shape, generator=gen, dtype=dtype)
        return Box(lo, up)
    return ball(str(kind), x, eps, domain)


def random_spec(rng: np.random.Generator, gen: torch.Generator, model64: nn.Module, s: InputSet,
                dtype: torch.dtype, near: bool) -> LinearSpec:
    """Random rows ``C·f(x) + d``; with ``near``, d puts every row within ±1e-4…1e-1 of 0 at the centre (where
    round-off and early stops decide)."""
    with torch.no_grad():
        out = model64(s.x.double())
    B, n = out.shape
    K = int(rng.integers(1, 4))
    C = torch.randn((B, K, n), generator=gen, dtype=torch.float64)
    if near:
        shift = torch.tensor(rng.choice([-1e-1, -1e-4, 0.0, 1e-4, 1e-3, 1e-1], size=(B, K)))
        d = -torch.einsum("bkn,bn->bk", C, out) + shift
    else:
        d = torch.randn((B, K), generator=gen, dtype=torch.float64)
    return LinearSpec(C.to(dtype), d.to(dtype))


# ------------------------------------------------------------------------------------------------ witnesses
def _project(s: InputSet, pts: torch.Tensor) -> torch.Tensor:
    """Points (B, J, ...) moved into the set of centre b (radial scaling for L2/L1 balls, then the box)."""
    lo, up = s.lower.unsqueeze(1), s.upper.unsqueeze(1)
    if not s.is_box:
        x = s.x.unsqueeze(1)
        delta = pts - x
        norm = delta.flatten(2).norm(p=s.p, dim=2).view(*delta.shape[:2], *([1] * (x.dim() - 2)))
        eps = s.eps.flatten()[:, None].view(-1, 1, *([1] * (x.dim() - 2)))
        pts = x + delta * torch.clamp(eps / norm.clamp_min(1e-300), max=1.0)
    return torch.minimum(torch.maximum(pts, lo), up)


def witnesses(model64: nn.Module, s: InputSet, C: torch.Tensor, d: torch.Tensor, objective=None,
              samples: int = 32, steps: int = 20, gen: torch.Generator | None = None) -> torch.Tensor:
    """Points of the set (B, P, ...): ``samples`` drawn, and PGD points minimising and maximising every row of
    ``C·f + d`` (and ``objective(rows) -> (B, J)`` if given), all in float64."""
    B, K = C.shape[:2]
    s64 = s.to(dtype=torch.float64)
    drawn = s64.sample(samples, gen).transpose(0, 1)  # (B, samples, ...)
    J = 2 * K + (0 if objective is None else 1)
    start = drawn[:, :J] if samples >= J else drawn[:, :1].expand(-1, J, *drawn.shape[2:])
    pts = _project(s64, start.clone())
    sign = torch.cat([torch.ones(K), -torch.ones(K)]).double()
    width = (s64.upper - s64.lower).unsqueeze(1)
    step = width * (2.5 / steps)
    C64, d64 = C.double(), d.double()
    which = (torch.arange(2 * K) % K).view(1, 2 * K, 1).expand(B, -1, 1)

    def rows(p):
        out = model64(p.reshape(-1, *p.shape[2:])).view(B, p.shape[1], -1)
        return torch.einsum("bkn,bjn->bjk", C64, out) + d64.unsqueeze(1)  # (B, J, K)

    for _ in range(steps):
        pts.requires_grad_(True)
        with torch.enable_grad():
            r = rows(pts)
            obj = r[:, :2 * K].gather(2, which).squeeze(2) * sign  # point j pushes row j % K down or up
            if objective is not None:
                obj = torch.cat([obj, objective(r[:, -1:]).reshape(B, 1)], 1)
            grad, = torch.autograd.grad(obj.sum(), pts)
        with torch.no_grad():
            pts = _project(s64, pts - step * grad.sign())
    return torch.cat([drawn, pts.detach()], 1)


def _row_values(model: nn.Module, pts: torch.Tensor, C: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Rows ``C·f(p) + d`` (B, P, K) at points (B, P, ...), computed in float64 by the model's dtype: a float32
    model gives its own (rounded) values, a float64 copy the reference ones."""
    dt = next(model.parameters()).dtype
    with torch.no_grad():
        out = model(pts.reshape(-1, *pts.shape[2:]).to(dt)).view(pts.shape[0], pts.shape[1], -1).double()
    return torch.einsum("bkn,bjn->bjk", C.double(), out) + d.double().unsqueeze(1)


def roundoff_bound(model: nn.Module, pts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A first-order bound on |fl(f(p)) − f(p)| per output for the network computed in ``dtype`` at points
    (N, ...): the standard forward error analysis, carried through the graph in float64. An affine op with fan-in
    n adds γ_n·(|W|·|h| + |b|), γ_n = n·u (u the unit round-off), to |W|·(incoming error); an activation scales
    the error by its Lipschitz constant (1/4 for Sigmoid) and adds u·|f(z)|; pools and sums carry it."""
    from certkit import graph as g

    u = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}[dtype]
    graph = g.to_graph(copy.deepcopy(model).double())
    h = graph.forward(pts.double(), return_all=True)
    err: list[torch.Tensor] = []
    with torch.no_grad():
        for i, node in enumerate(graph.nodes):
            op, ins = node.op, node.inputs
            if isinstance(op, g.Input):
                e = u * h[i].abs()
            elif isinstance(op, g.AffineOp):
                W = op.weight.abs()
                n = W[0].numel() if not isinstance(op, g.ElementwiseAffine) else 2
                b = op.bias.abs() if op.bias is not None else None
                e = op.apply(err[ins[0]], W, None) + n * u * op.apply(h[ins[0]].abs(), W, b).abs()
            elif isinstance(op, g.Activation):
                lip = 0.25 if isinstance(op, g.Sigmoid) else 1.0
                e = lip * err[ins[0]] + u * h[i].abs()
            elif isinstance(op, g.Add):
                e = err[ins[0]] + err[ins[1]] + u * h[i].abs()
            else:  # Flatten, Unflatten, AvgPool2d, MaxPool2d: monotone, 1-Lipschitz in the max norm
                e = op.forward(err[ins[0]]) + u * h[i].abs()
            err.append(e)
    return err[graph.output]


# ---------------------------------------------------------------------------------------------------- checks
def _tol(dtype, values: torch.Tensor, ibp_width: torch.Tensor, roundoff: torch.Tensor | float = 0.0) -> torch.Tensor:
    return RTOL[dtype] * (1 + values.abs() + ibp_width.double().nan_to_num(nan=math.inf)) + roundoff


def check_bounds(model, s, spec, model64, vals, roundoff, st: Stats, tag: str) -> None:
    """Every bound method contains the witnesses' row values ``vals`` (B, P, K), up to ``roundoff`` (B, P, K)."""
    dtype = s.x.dtype
    with torch.no_grad():
        ibp = interval_bounds(model, s, spec)
    width = (ibp.upper - ibp.lower).unsqueeze(1)
    methods = {
        "ibp": lambda: ibp,
        "crown": lambda: crown_bounds(model, s, spec),
        "crown-ibp": lambda: crown_bounds(model, s, spec, intermediate="ibp"),
        "alpha": lambda: alpha_crown_bounds(model, s, spec, iterations=3),
        "deepz": lambda: zonotope_bounds(model, s, spec),
    }
    for name, fn in methods.items():
        try:
            with torch.no_grad():
                b = fn()
        except CertkitError as e:  # e.g. an op a domain has no rule for
            st.skipped[f"{name}: {type(e).__name__}"] += 1
            continue
        lo, up = b.lower.double().unsqueeze(1), b.upper.double().unsqueeze(1)
        tol = _tol(dtype, vals, width, roundoff)
        below, above = (lo - vals - tol), (vals - up - tol)
        st.bound_checks += vals.numel()
        worst = torch.maximum(below, above).nan_to_num(nan=math.inf)
        if (worst > 0).any() or lo.isnan().any() or up.isnan().any():
            st.violations.append(f"{tag} {name}: a witness lies outside the bound by {float(worst.max()):.3g} "
                                 f"(NaN bound: {bool(lo.isnan().any() or up.isnan().any())})")


def _clause_min64(rows: torch.Tensor, clauses: torch.Tensor) -> torch.Tensor:
    """min over clauses of max over the clause's rows, for rows (..., K)."""
    return torch.stack([rows[..., clauses == q].amax(-1) for q in clauses.unique()], -1).amin(-1)


def check_verify(model, s, spec, clauses, model64, pts, vals, roundoff, st: Stats, tag: str,
                 rng: np.random.Generator, timeout: float) -> None:
    """The cascade and the complete methods never verify a violated property, every counterexample is real,
    and no reported row bound exceeds a witnessed value."""
    from certkit.verify import STAGES, verify_property

    dtype = s.x.dtype
    with torch.no_grad():
        ibp = interval_bounds(model, s, spec)
    width = (ibp.upper - ibp.lower)
    obj = _clause_min64(vals, clauses)  # (B, P)
    witnessed, at = obj.min(1)
    slack = roundoff.amax(2)  # (B, P): round-off in the model's dtype at each witness
    configs = [STAGES, ("ibp", "crown", "alpha", "bab", "milp"), ("ibp", "crown", "alpha", "milp"), ("bab",),
               ("milp",)]
    for k in rng.choice(len(configs), size=2, replace=False):
        stages = configs[int(k)]
        verdicts = verify_property(model, s, spec, clauses, stages=stages, timeout=timeout, pgd_steps=20,
                                   pgd_restarts=1, alpha_iterations=5)
        for b, v in enumerate(verdicts):
            st.verdicts[v.verdict] += 1
            name = f"{tag} stages={'+'.join(stages)} input {b}"
            tol_b = _tol(dtype, witnessed[b], width[b].max(), slack[b, at[b]])
            if v.verdict == "verified" and witnessed[b] < -tol_b:
                st.violations.append(f"{name}: verified, but a witness violates the property by "
                                     f"{float(-witnessed[b]):.3g}")
            if v.verdict == "falsified":
                cex = v.counterexample.double()
                one = s.subset([b]).to(dtype=torch.float64)
                inside = bool(one.contains(cex, tol=1e-6)[0])
                value = float(_clause_min64(_row_values(model64, cex.unsqueeze(0), spec.C[b:b + 1],
                                                        spec.d[b:b + 1])[0, 0], clauses))
                if not inside or value > 0:
                    st.violations.append(f"{name}: falsified by a point {'outside the set' if not inside else ''} "
                                         f"with property value {value:.3g} (must be ≤ 0)")
            if v.lower is not None:
                rowmin, arg = vals[b].min(0)
                excess = v.lower.double() - rowmin - _tol(dtype, rowmin, width[b], roundoff[b].gather(0, arg[None])[0])
                if (excess > 0).any():
                    st.violations.append(f"{name}: reported row bound above a witnessed value by "
                                         f"{float(excess.max()):.3g}")


def check_milp(model, s, spec, vals, roundoff, st: Stats, tag: str, timeout: float) -> None:
    """The MILP's reported bound is a lower bound, with and without the early stop at the sign."""
    from certkit.verify.milp import MilpEncoding

    dtype = s.x.dtype
    for b in range(s.batch_size):
        enc = MilpEncoding(model, s.subset([b]))
        for k in range(spec.C.shape[1]):
            rowmin, at = vals[b, :, k].min(0)
            rowmin = float(rowmin)
            for stop in (True, False):
                r = enc.minimize(spec.C[b, k], float(spec.d[b, k]), 0.0, timeout, stop_at_sign=stop)
                st.verdicts[f"milp-{r.verdict}"] += 1
                if r.bound > rowmin + RTOL[dtype] * (1 + abs(rowmin)) * 10 + float(roundoff[b, at, k]):
                    st.violations.append(f"{tag} MILP row {k} input {b} (stop_at_sign={stop}): bound {r.bound:.6g} "
                                         f"above a witnessed value {rowmin:.6g} ({r.status})")


def check_certify(model, s, model64, st: Stats, tag: str, rng: np.random.Generator, timeout: float,
                  relu_only: bool) -> None:
    """certify() never certifies an input a witness misclassifies; its margin bound is a lower bound."""
    from certkit.specs import margin_spec
    from certkit.verify import certify

    if not isinstance(s, LpBall):
        return
    with torch.no_grad():
        y = model(s.x).argmax(1)
    n = model64(s.x.double()).shape[1]
    spec = margin_spec(y, n, torch.float64)
    pts = witnesses(model64, s, spec.C, torch.zeros(spec.C.shape[:2], dtype=torch.float64), samples=16, steps=10)
    margins = _row_values(model64, pts, spec.C, torch.zeros(spec.C.shape[:2], dtype=torch.float64)).amin(2)
    st.points += pts.shape[0] * pts.shape[1]
    wmin = margins.amin(1)
    err = roundoff_bound(model64, pts.reshape(-1, *pts.shape[2:]), s.x.dtype).view(*pts.shape[:2], -1)
    slack = 2 * torch.einsum("bkn,bjn->bjk", spec.C.abs(), err).amax((1, 2))  # (B,)
    methods = ["ibp", "crown", "alpha"] + (["cascade"] if relu_only else [])
    for method in rng.choice(methods, size=2, replace=False):
        opts = {"timeout": timeout} if method == "cascade" else {}
        cert = certify(model, s.x, y, s.eps.flatten(), str(method), norm=s.p, domain=s.domain, **opts)
        for b in range(len(y)):
            tol = RTOL[s.x.dtype] * (1 + abs(float(wmin[b]))) * 10 + float(slack[b])
            st.verdicts["certified" if cert.certified[b] else "not certified"] += 1
            if cert.certified[b] and wmin[b] < -tol:
                st.violations.append(f"{tag} certify({method}) input {b}: certified, but a witness is "
                                     f"misclassified (margin {float(wmin[b]):.3g})")
            if float(cert.margin_lower[b]) > float(wmin[b]) + tol * (1 + abs(float(cert.margin_lower[b]))):
                st.violations.append(f"{tag} certify({method}) input {b}: margin bound "
                                     f"{float(cert.margin_lower[b]):.6g} above a witnessed margin {float(wmin[b]):.6g}")


# ------------------------------------------------------------------------------------------------ campaign
def run_case(seed: int, checks: tuple[str, ...] = CHECKS, timeout: float = 2.0, st: Stats | None = None) -> Stats:
    """One random case (network, set, spec) from ``seed``, through ``checks``."""
    st = st or Stats()
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    complete = "verify" in checks or "milp" in checks
    relu_only = complete and rng.random() < 0.7
    model, shape = random_net(rng, gen, relu_only=relu_only, small=complete)
    dtype = torch.float64 if rng.random() < 0.3 else torch.float32
    model = model.to(dtype)
    model64 = copy.deepcopy(model).double()
    box_only = complete and relu_only
    s = random_set(rng, gen, shape, 1 if complete else 2, dtype, box_only=box_only)
    spec = random_spec(rng, gen, model64, s, dtype, near=rng.random() < 0.6)
    K = spec.C.shape[1]
    clauses = torch.tensor(rng.integers(0, 2, size=K)) if rng.random() < 0.3 else torch.arange(K)
    clauses = torch.unique(clauses, return_inverse=True)[1]
    tag = f"[seed {seed}, {type(s).__name__}, eps {float(s.eps.flatten()[0]) if isinstance(s, LpBall) else 'box'}, " \
          f"{str(dtype)[6:]}]"
    st.cases += 1
    pts = witnesses(model64, s, spec.C, spec.d, lambda r: _clause_min64(r, clauses), samples=32, steps=20, gen=gen)
    st.points += pts.shape[0] * pts.shape[1]
    vals = _row_values(model64, pts, spec.C, spec.d)
    # a-priori round-off of the model's dtype at every witness, carried to the rows by |C|, maximised over the set
    err = roundoff_bound(model64, pts.reshape(-1, *pts.shape[2:]), dtype).view(*pts.shape[:2], -1)
    roundoff = 2 * torch.einsum("bkn,bjn->bjk", spec.C.double().abs(), err).amax(1, keepdim=True).expand_as(vals)
    if "bounds" in checks:
        check_bounds(model, s, spec, model64, vals, roundoff, st, tag)
    if "verify" in checks:
        check_verify(model, s, spec, clauses, model64, pts, vals, roundoff, st, tag, rng, timeout)
    if "milp" in checks and relu_only and s.is_box:
        check_milp(model, s, spec, vals, roundoff, st, tag, timeout)
    if "certify" in checks:
        check_certify(model, s, model64, st, tag, rng, timeout, relu_only)
    return st


def run(seeds, checks: tuple[str, ...] = CHECKS, timeout: float = 2.0, budget: float = math.inf,
        progress=None) -> Stats:
    """Cases for every seed in ``seeds`` (or until ``budget`` seconds are spent); each seed alternates between a
    bounds-and-certify case (batch of two, every set type) and a complete-verification case (small nets)."""
    st = Stats()
    t0 = time.perf_counter()
    for seed in seeds:
        if time.perf_counter() - t0 > budget:
            break
        which = tuple(c for c in checks if c in (("bounds", "certify") if seed % 2 == 0 else ("verify", "milp")))
        if which:
            run_case(seed, which, timeout, st)
        if progress is not None:
            progress(seed, st)
    st.seconds = time.perf_counter() - t0
    return st
