"""Zonotopes (DeepZ, Singh et al. 2018): ``x = a + Σ_i e_i·G_i`` with ``e ∈ [−1, 1]^m``, propagated forwards.

Affine ops map the centre and every generator exactly. An activation ``y = f(z)`` over ``[l, u]`` becomes
``y = λ·z + μ ± β`` with one new error term per neuron whose interval is not exact:

* ReLU, unstable (l < 0 < u), any slope λ ∈ [0, 1]: ``relu(z) − λz`` lies in ``[0, max(−λl, (1 − λ)u)]``, so
  μ = β = max(−λl, (1 − λ)u)/2. The default λ = u/(u − l) gives DeepZ's minimal-area relaxation; COLT learns λ.
* Sigmoid, Tanh: λ = min(f'(l), f'(u)) (the smallest slope on [l, u], as f' is unimodal with its peak at 0), so
  f(z) − λz is non-decreasing and lies in ``[f(l) − λl, f(u) − λu]``.

Error terms are numbered globally in the order they are created, so branches (residual connections) that
each add terms stay consistent: a zonotope is zero-padded to the current number of terms before use.

Also here, for COLT (Balunović & Vechev 2020): the e-space view of the region after any layer
(:meth:`Zonotope.point`, :meth:`Zonotope.project`), and :func:`cauchy_bounds`, the random-projection estimate
of the ℓ1 norms of the generator rows (Wong et al. 2018; COLT appendix B) for cheap training-time bounds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from certkit import graph as g
from certkit import rng
from certkit.bounds.interval import Bounds
from certkit.bounds.relax import relu_band
from certkit.specs import InputSet, LinearSpec, SpecError


@dataclass
class Zonotope:
    """``center`` (B, *shape) and ``generators`` (B, m, *shape): the set {center + Σ_i e_i·generators[:, i]}."""

    center: torch.Tensor
    generators: torch.Tensor

    @property
    def num_terms(self) -> int:
        return self.generators.shape[1]

    def bounds(self) -> Bounds:
        r = self.generators.abs().sum(1)
        return Bounds(self.center - r, self.center + r)

    def point(self, e: torch.Tensor) -> torch.Tensor:
        """The point ``a + A·e`` for error terms e (B, m) — COLT's latent parameterisation."""
        return self.center + torch.einsum("bm,bm...->b...", e.to(self.center), self.generators[:, : e.shape[1]])

    @staticmethod
    def project(e: torch.Tensor) -> torch.Tensor:
        """Projection onto the e-space box [−1, 1]^m (keeps ``point(e)`` inside the zonotope)."""
        return e.clamp(-1.0, 1.0)

    def sample_e(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform random error terms (B, m) in [−1, 1]."""
        u = rng.uniform(self.generators.shape[:2], generator, self.center.dtype, self.center.device)
        return 2 * u - 1

    def padded(self, m: int) -> Zonotope:
        if self.num_terms == m:
            return self
        pad = self.generators.new_zeros(self.generators.shape[0], m - self.num_terms, *self.generators.shape[2:])
        return Zonotope(self.center, torch.cat([self.generators, pad], 1))

    @classmethod
    def from_input_set(cls, s: InputSet) -> Zonotope:
        """The box of the input set as a zonotope with one term per input coordinate of nonzero width (an L2/L1
        ball is replaced by its bounding box: sound, not tight)."""
        lo, up = s.lower, s.upper
        c, r = (lo + up) / 2, (up - lo) / 2
        B, n = c.shape[0], c[0].numel()
        keep = (r.flatten(1) > 0).any(0).nonzero().squeeze(1)
        G = torch.zeros(B, len(keep), n, dtype=c.dtype, device=c.device)
        G[:, torch.arange(len(keep), device=c.device), keep] = r.flatten(1)[:, keep]
        return cls(c, G.view(B, len(keep), *c.shape[1:]))


def _activation(op: g.Activation, z: Zonotope, m: int, slope: torch.Tensor | None) -> tuple[Zonotope, int]:
    b = z.bounds()
    l, u = b.lower, b.upper
    if isinstance(op, g.PiecewiseLinear):
        lam, band, new = relu_band(b, slope, op.negative_slope)
        mu = beta = band / 2
    else:
        f = torch.sigmoid if isinstance(op, g.Sigmoid) else torch.tanh

        def df(x):
            return f(x) * (1 - f(x)) if isinstance(op, g.Sigmoid) else 1 - f(x) ** 2

        lam = torch.minimum(df(l), df(u))
        lo_, hi_ = f(l) - lam * l, f(u) - lam * u
        mu, beta = (lo_ + hi_) / 2, (hi_ - lo_) / 2
        new = beta > 0
    center = lam * z.center + mu
    gens = lam.unsqueeze(1) * z.padded(m).generators
    cols = new.flatten(1).any(0).nonzero().squeeze(1)
    if len(cols):
        B = center.shape[0]
        extra = torch.zeros(B, len(cols), center[0].numel(), dtype=center.dtype, device=center.device)
        extra[:, torch.arange(len(cols), device=center.device), cols] = beta.flatten(1)[:, cols]
        gens = torch.cat([gens, extra.view(B, len(cols), *center.shape[1:])], 1)
        m += len(cols)
    return Zonotope(center, gens), m


def _linear_op(op: g.Op, x: torch.Tensor) -> torch.Tensor:
    """A linear op without its bias, on a (N, *shape) batch."""
    if isinstance(op, g.AffineOp):
        return op.apply(x, op.weight, None)
    return op.forward(x)


def _z_linear(op, ins, m, slope):
    x = ins[0]
    B, k = x.generators.shape[:2]
    gens = _linear_op(op, x.generators.reshape(B * k, *x.generators.shape[2:]))
    return Zonotope(op.forward(x.center), gens.reshape(B, k, *gens.shape[1:])), m


def _z_add(op, ins, m, slope):
    a, b = (z.padded(m) for z in ins)
    return Zonotope(a.center + b.center, a.generators + b.generators), m


# transfer rules (op type → rule(op, input zonotopes, number of error terms, slope) → (zonotope, terms))
RULES = {
    g.AffineOp: _z_linear, g.AvgPool2d: _z_linear, g.Flatten: _z_linear, g.Unflatten: _z_linear,
    g.Reindex: _z_linear, g.Activation: lambda op, ins, m, slope: _activation(op, ins[0], m, slope), g.Add: _z_add,
}
"""The zonotope domain's transfer rules; the ops it supports are derived from this table."""


def zonotope_bounds(model, input_set: InputSet | Zonotope, spec: LinearSpec | None = None,
                    slopes: dict[int, torch.Tensor] | None = None, return_all: bool = False, start: int = 0):
    """DeepZ bounds on the model's outputs (or on the rows of ``spec``, applied exactly to the zonotope).

    ``slopes``: optional ReLU slopes {ReLU node index: tensor broadcastable to its input}. With ``return_all``,
    also the list of Zonotopes of every node (the regions COLT attacks in). ``input_set`` may be a Zonotope
    standing for the output of node ``start`` (to continue a propagation from a latent layer).
    """
    graph = g.to_graph(model)
    z0 = input_set if isinstance(input_set, Zonotope) else Zonotope.from_input_set(input_set)
    zs: list[Zonotope | None] = [None] * len(graph.nodes)
    zs[start] = z0
    m = z0.num_terms
    for i in range(start + 1, len(graph.nodes)):
        node = graph.nodes[i]
        op = node.op
        if isinstance(op, g.Input):
            raise SpecError("a graph with several inputs is not supported")
        ins = [zs[k] for k in node.inputs]
        if any(z is None for z in ins):
            raise SpecError(f"node '{node.name}' depends on nodes before the start node {start}")
        rule = g.rule_for(RULES, op, "the zonotope domain (DeepZ)", node.name)
        zs[i], m = rule(op, ins, m, None if slopes is None else slopes.get(i))
    out = zs[graph.output]
    if spec is not None:
        if out.center.dim() != 2 or spec.C.shape[2] != out.center.shape[1] or spec.C.shape[0] != out.center.shape[0]:
            raise SpecError(f"spec C of shape {tuple(spec.C.shape)} does not fit outputs of shape "
                            f"{tuple(out.center.shape[1:])}")
        C = spec.C.to(out.center)
        c = torch.einsum("bkn,bn->bk", C, out.center)
        if spec.d is not None:
            c = c + spec.d.to(c)
        out = Zonotope(c, torch.einsum("bkn,bmn->bmk", C, out.generators))
    result = out.bounds()
    return (result, zs) if return_all else result


def cauchy_bounds(model, input_set: InputSet, projections: int = 200,
                  generator: torch.Generator | None = None, return_all: bool = False, stop: int | None = None,
                  estimator: str = "auto"):
    """Estimated DeepZ bounds by Cauchy random projections (Wong et al. 2018; COLT appendix B).

    For a generator matrix G, ``G·r`` with r a vector of standard Cauchy variables is Cauchy with scale
    ``‖G‖_1`` per row, so the scale of k projections estimates the row ℓ1 norms — the zonotope's radii —
    from k projections propagated instead of all m generators. Wong et al. take the median of ``|G·r_k|``
    (``estimator="median"``); the geometric mean ``exp(mean_k log|G·r_k|)`` (``"geometric"``) is exact in
    expectation in log space (E log|C| = log s for C ~ Cauchy(0, s)), has the same relative standard error
    π/(2√k) and needs no sort, but its gradient (1/P terms) is heavy-tailed; ``"auto"`` takes the median when
    gradients are being recorded and the geometric mean otherwise. A row's ℓ1 norm is the sum of its norms over
    disjoint groups of error terms (the input box's; each ReLU's new terms), so a group whose part of G is still
    a diagonal matrix or one linear map of one (|W|·β, with ReLU slopes and per-channel scalings on either side)
    adds its exact radius, and only the groups mapped further are estimated, together, from one set of
    projections. A group's Cauchy draws (``β_j·c``, a fresh c per term and projection) are made only when some
    estimate needs them, and then at once join the others' (one projection tensor per node, so no map is applied
    twice; such a group is estimated from there on); projections are only propagated as far as the last estimate
    that uses them. On COLT's MNIST net this makes the first latent stage's bounds exact but for the input box's
    share and skips its largest draw. Only the ReLUs' inputs get estimates. These are estimates, **not sound
    bounds**: for training only. Differentiable in the weights (COLT's ReLU-stability regulariser uses them).
    With ``return_all``, a dict {node: Bounds} of the estimates at every ReLU input up to ``stop`` (default: the
    output) is returned instead.
    """
    graph = g.to_graph(model)
    lo, up = input_set.lower, input_set.upper
    c, r = (lo + up) / 2, (up - lo) / 2
    B, k = c.shape[0], projections
    if estimator == "auto":
        estimator = "median" if torch.is_grad_enabled() else "geometric"
    if estimator not in ("median", "geometric"):
        raise ValueError(f"estimator must be 'median', 'geometric' or 'auto', got {estimator!r}")
    stop = graph.output if stop is None else stop
    nodes = graph.nodes[: stop + 1]
    phases = _term_phases(nodes)
    targets = [n.inputs[0] for n in nodes if isinstance(n.op, g.ReLU)] + ([] if return_all else [stop])
    for n in nodes:
        if not isinstance(n.op, (g.Input, g.AffineOp, g.AvgPool2d, g.Flatten, g.Unflatten, g.ReLU, g.Add)):
            raise g.UnsupportedOpError(f"Cauchy estimates have no rule for {n.op!r} (node '{n.name}')")
    # term groups whose radius is no longer exact at some estimate need projections, drawn where they arise;
    # projections are only propagated as far as the last estimate that uses them
    drawn = {grp for t in targets for grp, ph in phases[t].items() if ph == _GONE}
    last = max((t for t in targets if any(ph == _GONE for ph in phases[t].values())), default=-1)

    def cauchy(scale):
        u = rng.uniform((B, k, *scale.shape[1:]), generator, c.dtype, c.device)
        return u.sub_(0.5).mul_(math.pi).tan_().mul_(scale.unsqueeze(1))

    def radius(st: _CauchyState) -> torch.Tensor:
        rad = _total(list(st.exact.values()))
        rad = torch.zeros_like(st.center) if rad is None else rad
        if st.merged is not None:
            P = st.merged.abs()
            rad = rad + (P.median(1).values if estimator == "median" else P.clamp_min(1e-30).log().mean(1).exp())
        return rad

    states: list[_CauchyState] = []
    est: dict[int, Bounds] = {}
    for i, node in enumerate(nodes):
        op, keep = node.op, i <= last
        if isinstance(op, g.Input):
            states.append(_CauchyState(c, {i: r}, {i: cauchy(r)} if keep and i in drawn else {}, None))
            continue
        if isinstance(op, g.Add):  # a sum of two sets: every group's radius is estimated from here on
            parts = [states[j] for j in node.inputs]
            P = [p for st in parts for p in [*st.proj.values(), st.merged] if p is not None] if keep else []
            states.append(_CauchyState(parts[0].center + parts[1].center, {}, {}, _total(P)))
            continue
        x = states[node.inputs[0]]
        if isinstance(op, g.ReLU):
            rad = radius(x)
            est[node.inputs[0]] = Bounds(x.center - rad, x.center + rad)
            lam, band, _ = relu_band(est[node.inputs[0]])
            half = band / 2
            st = x.map(lambda t: lam * t, lambda t: lam.unsqueeze(1) * t, keep)
            st.center = lam * x.center + half
            st.exact[i] = half
            if keep and i in drawn:
                if st.merged is None and not st.proj:
                    st.proj[i] = cauchy(half)
                else:  # one projection tensor per node: drawn groups join the merged ones (no extra maps)
                    st.merged = _total([cauchy(half), *st.proj.values(), st.merged])
                    for grp in [i, *st.proj]:
                        del st.exact[grp]
                    st.proj = {}
        else:
            y = op.forward(x.center)

            def lin(t, op=op, shape=y.shape[1:]):
                return _linear_op(op, t.reshape(-1, *t.shape[2:])).reshape(*t.shape[:2], *shape)

            if isinstance(op, (g.Flatten, g.Unflatten)):
                st = x.map(op.forward, lin, keep)
            else:
                absw = (lambda t: op.apply(t, op.weight.abs(), None)) if isinstance(op, g.AffineOp) else op.forward
                # groups that lose their exact radius here join the merged projections before the map
                lost = [grp for grp, ph in phases[i].items() if ph == _GONE and grp in x.exact]
                pre = _CauchyState(x.center, {grp: v for grp, v in x.exact.items() if grp not in lost},
                                   {grp: v for grp, v in x.proj.items() if grp not in lost},
                                   _total([x.merged, *(x.proj[grp] for grp in lost if grp in x.proj)]))
                st = pre.map(absw, lin, keep)
            st.center = y
        states.append(st)
    if return_all:
        return est
    out = states[stop]
    rad = radius(out)
    return Bounds(out.center - rad, out.center + rad)


_DIAG, _LIN, _GONE = 0, 1, 2


def _total(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The sum of the tensors that are not None (None if there are none), without a copy for a single one."""
    ts = [t for t in ts if t is not None]
    return functools.reduce(torch.add, ts) if ts else None


@dataclass
class _CauchyState:
    """A DeepZ set in :func:`cauchy_bounds`: its centre; the exact radius of every term group that has passed
    at most one non-diagonal linear map (a ReLU's new terms or the input box, keyed by the node that made them);
    the Cauchy projections of such groups that are estimated later; the merged projections of all the others."""

    center: torch.Tensor
    exact: dict[int, torch.Tensor]
    proj: dict[int, torch.Tensor]
    merged: torch.Tensor | None

    def map(self, radius_map, proj_map, keep: bool) -> _CauchyState:
        proj = {grp: proj_map(p) for grp, p in self.proj.items()} if keep else {}
        merged = proj_map(self.merged) if keep and self.merged is not None else None
        return _CauchyState(self.center, {grp: radius_map(v) for grp, v in self.exact.items()}, proj, merged)


def _term_phases(nodes) -> list[dict[int, int]]:
    """Per node, each error-term group's phase: diagonal (a box, scaled per coordinate: radius r), once mapped by
    a non-diagonal linear op (radius |W|·r, still exact), or gone (only estimable). Diagonal ops (ReLU slopes,
    per-channel scalings, reshapes) keep a phase; a residual sum makes every group gone."""
    phases: list[dict[int, int]] = []
    for i, node in enumerate(nodes):
        op = node.op
        if isinstance(op, g.Input):
            phases.append({i: _DIAG})
        elif isinstance(op, g.Add):
            phases.append({grp: _GONE for j in node.inputs for grp in phases[j]})
        elif isinstance(op, (g.ElementwiseAffine, g.Flatten, g.Unflatten)):
            phases.append(dict(phases[node.inputs[0]]))
        elif isinstance(op, g.ReLU):
            phases.append({**phases[node.inputs[0]], i: _DIAG})
        else:  # a non-diagonal linear op
            phases.append({grp: min(ph + 1, _GONE) for grp, ph in phases[node.inputs[0]].items()})
    return phases


def latent_point(model, input_set: InputSet, bounds: list[Bounds], e: list[torch.Tensor],
                 stop: int) -> torch.Tensor:
    """COLT's latent point ``a + A·e`` of the zonotope after node ``stop``, by one forward pass.

    The zonotope is the DeepZ relaxation built on the given pre-activation ``bounds`` (Bounds indexed by node,
    at least at every ReLU input up to ``stop``, e.g. from :func:`cauchy_bounds`); ``e`` holds one error-term
    tensor per term group, each in [−1, 1]: ``e[0]`` for the input box (shape of the input) and one per ReLU up
    to ``stop`` (shape of its neurons), in graph order.
    Every e in the box gives a point of the zonotope, so projected PGD on e (:meth:`Zonotope.project`) searches
    the convex region after the layer without materialising its generator matrix."""
    graph = g.to_graph(model)
    lo, up = input_set.lower, input_set.upper
    vals: list[torch.Tensor] = []
    k = 0
    for node in graph.nodes[: stop + 1]:
        op = node.op
        if isinstance(op, g.Input):
            vals.append((lo + up) / 2 + (up - lo) / 2 * e[0])
            k = 1
            continue
        ins = [vals[j] for j in node.inputs]
        if isinstance(op, g.ReLU):
            b = bounds[node.inputs[0]]
            lam, band, _ = relu_band(Bounds(b.lower.detach(), b.upper.detach()))
            mu = band / 2
            vals.append(lam * ins[0] + mu + mu * e[k])
            k += 1
        elif isinstance(op, g.Activation):
            raise g.UnsupportedOpError(f"latent points are implemented for ReLU networks, not {op!r}")
        else:
            vals.append(op.forward(*ins))
    return vals[stop]


def latent_terms(model, input_set: InputSet, stop: int, generator: torch.Generator | None = None,
                 random: bool = True) -> list[torch.Tensor]:
    """Error terms for :func:`latent_point` (uniform in [−1, 1], or zeros), one tensor per term group."""
    graph = g.to_graph(model)
    x = input_set.x
    with torch.no_grad():
        vals = graph.forward(x, return_all=True)
    shapes = [x.shape] + [vals[n.inputs[0]].shape for n in graph.nodes[: stop + 1] if isinstance(n.op, g.ReLU)]

    def draw(shape):
        if not random:
            return torch.zeros(shape, dtype=x.dtype, device=x.device)
        return 2 * rng.uniform(shape, generator, x.dtype, x.device) - 1

    return [draw(s) for s in shapes]
