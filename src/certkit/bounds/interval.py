"""Interval bound propagation (IBP; Gowal et al. 2018, "On the effectiveness of IBP").

Affine ops map a box with centre c and radius r to ``W c + b ± |W| r``; monotone activations and pools map
the end points. Two refinements keep the bounds tight and sound:

* For L2/L1 balls the input is carried symbolically (``x = centre + scale ⊙ δ``, ``||δ||_p <= eps``) through
  the leading per-element affine ops (Normalize, BatchNorm, Flatten); the first Linear/Conv then gets the
  exact dual-norm bound ``W c + b ± eps·||W_i diag(scale)||_q`` intersected with the box bound (the ball is
  clipped to the data domain, so both hold). For L1 balls on convolutions the ∞-norm of a row is bounded by
  its 2-norm (sound, a little loose).
* With an output spec ``C·f(x) + d`` whose last op is Linear, ``C`` is folded into that layer
  (``(C W) h + C b + d``) before concretising, as in Gowal et al.'s elision of the last layer.

Every bound is a pure function of its own input: nothing is cached across inputs of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certkit import graph as g
from certkit.specs import InputSet, LinearSpec, SpecError


@dataclass
class Bounds:
    """Elementwise ``lower <= value <= upper``."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        return self.upper - self.lower


@dataclass
class _Ball:
    """``x = centre + scale ⊙ δ`` with ``||δ||_p <= eps`` (before clipping), and ``box`` ⊇ the clipped set."""

    centre: torch.Tensor
    scale: torch.Tensor  # the same for every input: batch dimension 1
    eps: torch.Tensor  # (B, 1, ...)
    p: float
    box: Bounds


def _interval_affine(op: g.AffineOp, b: Bounds) -> Bounds:
    mid, rad = (b.upper + b.lower) / 2, (b.upper - b.lower) / 2
    c = op.apply(mid, op.weight, op.bias)
    r = op.apply(rad, op.weight.abs(), None)
    return Bounds(c - r, c + r)


def _ball_affine(op: g.AffineOp, v: _Ball, whole_kernel: bool = False) -> Bounds:
    box = _interval_affine(op, v.box)
    c = op.forward(v.centre)
    # ||row_i · diag(scale)||_2 = sqrt(A_{W²}(scale²))_i, exact for Linear/Conv/ConvTranspose (no weight sharing
    # within a row); for p = 1 the dual ∞-norm is bounded above by this 2-norm. ``whole_kernel`` charges every
    # conv output the norm of its whole kernel, as auto_LiRPA does (looser where padding cuts the kernel).
    sq = v.scale.square()
    if whole_kernel and isinstance(op, g.Conv2d):
        w2 = op.weight.square().sum((2, 3), keepdim=True)  # the scale's largest entry per channel: sound
        norm = torch.nn.functional.conv2d(sq.amax((2, 3), keepdim=True), w2).sqrt().expand(-1, -1, *c.shape[2:])
    else:
        norm = op.apply(sq, op.weight.square(), None).clamp_min(0).sqrt()
    if isinstance(op, g.Linear) and v.p == 1:
        norm = (op.weight.abs().unsqueeze(0) * v.scale.abs().unsqueeze(1)).amax(-1)
    dev = v.eps.flatten(1)[:, :1].view(-1, *([1] * (c.dim() - 1))) * norm
    return Bounds(torch.maximum(box.lower, c - dev), torch.minimum(box.upper, c + dev))


def _concrete(v: Bounds | _Ball) -> Bounds:
    return v.box if isinstance(v, _Ball) else v


def _affine(op: g.AffineOp, args: list, whole_kernel: bool) -> Bounds | _Ball:
    v = args[0]
    if not isinstance(v, _Ball):
        return _interval_affine(op, v)
    if isinstance(op, g.ElementwiseAffine):  # stays a ball: x ↦ s·x + t scales the centre and the scale
        return _Ball(op.forward(v.centre), op.apply(v.scale, op.weight, None), v.eps, v.p, _interval_affine(op, v.box))
    return _ball_affine(op, v, whole_kernel)


def _rearrange(op: g.Op, args: list, whole_kernel: bool) -> Bounds | _Ball:
    """Flatten, Unflatten, Reindex: the entries move; a ball stays one when no entry is read twice."""
    v = args[0]
    box = _concrete(v)
    box = Bounds(op.forward(box.lower), op.forward(box.upper))
    if isinstance(v, _Ball) and (not isinstance(op, g.Reindex) or _is_permutation(op.index)):
        return _Ball(op.forward(v.centre), op.forward(v.scale), v.eps, v.p, box)
    return box


def _is_permutation(index: torch.Tensor) -> bool:
    return bool(torch.equal(index.sort().values, torch.arange(len(index), device=index.device)))


def _monotone(op: g.Op, args: list, whole_kernel: bool) -> Bounds:
    """Non-decreasing in every input: activations, average pools (positive weights), max pools."""
    b = _concrete(args[0])
    return Bounds(op.forward(b.lower), op.forward(b.upper))


def _add(op: g.Op, args: list, whole_kernel: bool) -> Bounds:
    a, b = (_concrete(v) for v in args)
    return Bounds(a.lower + b.lower, a.upper + b.upper)


RULES = {
    g.AffineOp: _affine,
    g.Flatten: _rearrange, g.Unflatten: _rearrange, g.Reindex: _rearrange,
    g.Activation: _monotone, g.AvgPool2d: _monotone, g.MaxPool2d: _monotone,
    g.Add: _add,
}
"""The interval domain's transfer rules (op type → rule); the ops it supports are derived from it."""


def _initial(input_set: InputSet, dtype: torch.dtype, device) -> Bounds | _Ball:
    box = Bounds(input_set.lower.to(device, dtype), input_set.upper.to(device, dtype))
    if not input_set.is_box:
        x = input_set.x.to(device, dtype)
        return _Ball(x, torch.ones_like(x[:1]), input_set.eps.to(device, dtype), input_set.p, box)
    return box


def _model_dtype_device(graph: g.Graph, default: torch.Tensor):
    for n in graph.nodes:
        if isinstance(n.op, g.AffineOp) and not isinstance(n.op, g.ElementwiseAffine):
            w = n.op.weight
            return w.dtype, w.device
    return default.dtype, default.device


def _fold_spec(op: g.Linear, h: Bounds | _Ball, spec: LinearSpec) -> Bounds:
    """Bounds on ``C (W h + b) + d`` with ``C W`` formed first (tighter than bounding f, then C·f)."""
    W = torch.einsum("bkn,nm->bkm", spec.C.to(op.weight.dtype), op.weight)
    b = spec.C.to(op.weight.dtype) @ op.bias if op.bias is not None else 0.0
    if spec.d is not None:
        b = b + spec.d.to(op.weight.dtype)
    box = _concrete(h)
    mid, rad = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
    if mid.dim() != 2:
        raise SpecError(f"the input of the last Linear must be flat (B, n), got {tuple(mid.shape)}")
    c = torch.einsum("bkm,bm->bk", W, mid) + b
    r = torch.einsum("bkm,bm->bk", W.abs(), rad)
    lower, upper = c - r, c + r
    if isinstance(h, _Ball):  # dual-norm bound of a one-layer network over an Lp ball
        cc = torch.einsum("bkm,bm->bk", W, h.centre) + b
        dev = h.eps.flatten(1)[:, :1] * torch.einsum("bkm,m->bk", W.square(), h.scale[0].square()).sqrt()
        lower, upper = torch.maximum(lower, cc - dev), torch.minimum(upper, cc + dev)
    return Bounds(lower, upper)


def interval_bounds(
    model,
    input_set: InputSet,
    spec: LinearSpec | None = None,
    return_all: bool = False,
    whole_kernel_norms: bool = False,
) -> Bounds | tuple[Bounds, list[Bounds]]:
    """IBP bounds on the model's output (or on ``spec``'s rows) for every input in ``input_set``.

    Bounds are computed in the model's dtype and on its device. With ``return_all``, also the bounds of every
    node of the graph (in the graph's node order; the spec is not applied to these).
    ``whole_kernel_norms`` reproduces auto_LiRPA's looser L2/L1 bound on the first convolution (for comparison).
    """
    graph = g.to_graph(model)
    dtype, device = _model_dtype_device(graph, input_set.x)
    vals: list[Bounds | _Ball] = []
    for node in graph.nodes:
        args = [vals[i] for i in node.inputs]
        if isinstance(node.op, g.Input):
            vals.append(_initial(input_set, dtype, device))
            continue
        rule = g.rule_for(RULES, node.op, "interval bound propagation", node.name)
        try:
            vals.append(rule(node.op, args, whole_kernel_norms))
        except RuntimeError as e:
            raise SpecError(f"inputs of shape {tuple(input_set.x.shape)} do not fit the model at node "
                            f"'{node.name}' ({node.op!r}): {e}") from e
    last = graph.nodes[graph.output]
    out = _concrete(vals[graph.output])
    if spec is not None:
        if out.lower.dim() != 2:
            raise SpecError(f"output specs need a flat output (B, n), got {tuple(out.lower.shape)}")
        if spec.C.shape[0] != out.lower.shape[0] or spec.C.shape[2] != out.lower.shape[1]:
            raise SpecError(f"spec C of shape {tuple(spec.C.shape)} does not fit outputs {tuple(out.lower.shape)}")
        if isinstance(last.op, g.Linear):
            out = _fold_spec(last.op, vals[last.inputs[0]], spec)
        else:
            out = Bounds(*spec.bound(out.lower, out.upper))
    if return_all:
        return out, [_concrete(v) for v in vals]
    return out
