"""Linear backward bounds (CROWN, Zhang et al. 2018; DeepPoly, Singh et al. 2019).

To bound ``C·x_t`` for a node ``t``, a linear function ``A·x_k + c`` is carried backwards from ``t`` to the input:
affine ops are substituted exactly (Linear by ``A W``, convolutions by the transposed convolution of ``A``), and
every ReLU ``y = relu(z)`` with pre-activation bounds ``l <= z <= u`` is replaced by a linear relaxation,
``sl·z <= y <= su·(z − l)`` with ``su = u/(u−l)`` on unstable neurons and the adaptive lower slope ``sl = 1`` if
``u > −l`` else ``0`` (CROWN's choice). Positive coefficients take the lower relaxation, negative ones the upper,
when a lower bound is sought. At the input the linear function is minimised exactly over the box (and over the
L2/L1 ball through the dual norm). Pre-activation bounds are computed the same way, layer by layer, and
intersected with the IBP bounds of the same input (both hold, so the intersection does too); the first affine
layer's bounds are taken from IBP, where they are exact, and only neurons whose IBP interval crosses zero get a
backward pass (a stable ReLU is relaxed exactly whatever its bounds).

Memory grows with (batch × neurons of a layer × neurons of the layers below): use small batches on conv nets.

Every bound is a pure function of its own input. Sigmoid and Tanh get parallel chord/tangent bounds, MaxPool
DeepPoly's relaxation (the input with the largest lower bound, exact when it dominates its window).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from certkit import graph as g
from certkit.bounds.interval import Bounds, interval_bounds
from certkit.bounds.relax import relu_relaxation, sshape_relaxation
from certkit.specs import InputSet, LinearSpec


def _affine_backward(op: g.AffineOp, A: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``A·op(x)`` (A: (B, K, *out_shape)) return (A', c) with ``A·op(x) = A'·x + c``."""
    B, K = A.shape[:2]
    flat = A.reshape(B * K, *A.shape[2:])
    bias = op.bias
    if isinstance(op, g.Linear):
        A_in = flat @ op.weight
    elif isinstance(op, g.ElementwiseAffine):  # the constants may broadcast: sum A over what they broadcast over
        A_in = op.apply(flat, op.weight, None)
        if A_in.shape[1:] != tuple(in_shape):
            A_in = A_in.sum_to_size(A_in.shape[0], *in_shape)
    elif isinstance(op, g.Conv2d):
        m = op.module
        out_hw = flat.shape[-2:]
        pad = []
        for i in range(2):
            full = (out_hw[i] - 1) * m.stride[i] - 2 * m.padding[i] + m.dilation[i] * (m.kernel_size[i] - 1) + 1
            pad.append(in_shape[-2 + i] - full)
        A_in = F.conv_transpose2d(flat, op.weight, None, m.stride, m.padding, tuple(pad), m.groups, m.dilation)
    elif isinstance(op, g.ConvTranspose2d):
        m = op.module
        A_in = F.conv2d(flat, op.weight, None, m.stride, m.padding, m.dilation, m.groups)
    else:  # pragma: no cover - every AffineOp is listed above
        raise g.UnsupportedOpError(f"no backward rule for {op!r}")
    if bias is None:
        c = torch.zeros(B, K, dtype=A.dtype, device=A.device)
    else:
        c = (flat * op.bias_map(tuple(flat.shape[1:]))).flatten(1).sum(1).view(B, K)
    return A_in.reshape(B, K, *in_shape), c


def _avgpool_backward(op: g.AvgPool2d, A: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    m = op.module
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
    s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
    p = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
    if m.ceil_mode or m.divisor_override or (not m.count_include_pad and any(p)):
        raise g.UnsupportedOpError("CROWN through AvgPool2d needs ceil_mode=False, no divisor_override, and "
                                   "count_include_pad=True when padded")
    B, K, C = A.shape[:3]
    flat = A.reshape(B * K, *A.shape[2:])
    w = torch.full((C, 1, *k), 1.0 / (k[0] * k[1]), dtype=A.dtype, device=A.device)
    out_hw = flat.shape[-2:]
    pad = tuple(in_shape[-2 + i] - ((out_hw[i] - 1) * s[i] - 2 * p[i] + k[i]) for i in range(2))
    return F.conv_transpose2d(flat, w, None, s, p, pad, C).reshape(B, K, *in_shape)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _maxpool_backward(op: g.MaxPool2d, A: torch.Tensor, b: Bounds, in_shape: tuple[int, ...]):
    """DeepPoly's max-pool relaxation: ``y ≥ x_i*`` for the input i* with the largest lower bound of its window,
    and ``y ≤ x_i*`` when that lower bound is at least every other input's upper bound (the max is then x_i*),
    else ``y ≤ max_i u_i``. Returns (A', c) for lower bounds of ``A·y``."""
    m = op.module
    lo, idx = F.max_pool2d(b.lower, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    umax = F.max_pool2d(b.upper, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    k, st = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    if all(s_ >= k_ for s_, k_ in zip(st, k)):  # disjoint windows: remove x_i* and pool the others' upper bounds
        others = b.upper.flatten(2).scatter(2, idx.flatten(2), -math.inf).view_as(b.upper)
        u_other = F.max_pool2d(others, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        exact = (lo >= u_other).unsqueeze(1)
    else:  # overlapping windows: the upper bound is always the constant max_i u_i (sound, never exact)
        exact = torch.zeros_like(lo, dtype=torch.bool).unsqueeze(1)
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    coef = pos + torch.where(exact, neg, torch.zeros_like(neg))
    c = (torch.where(exact, torch.zeros_like(neg), neg) * umax.unsqueeze(1)).flatten(2).sum(2)
    B, K, C = A.shape[:3]
    out = torch.zeros(B, K, C, in_shape[-2] * in_shape[-1], dtype=A.dtype, device=A.device)
    out.scatter_add_(3, idx.flatten(2).unsqueeze(1).expand(B, K, C, -1), coef.flatten(3))
    return out.view(B, K, *in_shape), c


@dataclass
class _Pass:
    """What the backward rules read: every node's shape (one input), the pre-activation bounds, α-CROWN's
    slopes and the coefficients to record (see :func:`_backward`)."""

    shapes: list[tuple[int, ...]]
    pre: dict[int, Bounds]
    alphas: dict[int, torch.Tensor] | None
    record: dict[int, torch.Tensor] | None
    relax: dict[int, tuple[torch.Tensor, ...]] | None = None
    stable_slopes: bool = False  # α also relaxes the active neurons (l > 0): y ≥ α·z + (1 − α)·l


# A backward rule maps the coefficients A on an op's output to [(input node, coefficients on it, constant)] with
# A·y ≥ Σ A_j·x_j + constant over the op's relaxation (a lower bound; upper bounds are lower bounds of −A).
def _back_affine(op, node, A, p):
    j = node.inputs[0]
    Aj, c = _affine_backward(op, A, p.shapes[j])
    return [(j, Aj, c)]


def _back_kink(op: g.PiecewiseLinear, node, A, p):
    j = node.inputs[0]
    if p.record is not None:
        p.record[j] = A
    alpha = p.alphas.get(j) if p.alphas is not None else None
    if p.relax is not None and j in p.relax:  # computed once for several passes over the same bounds
        unstable, sl, su, bu = p.relax[j]
        if alpha is not None:
            a = op.negative_slope
            sl = torch.where(unstable, a + (1 - a) * alpha if a else alpha, sl)
    else:
        b = p.pre[j]
        sl, su, bu = relu_relaxation(Bounds(b.lower.unsqueeze(1), b.upper.unsqueeze(1)), op.negative_slope, alpha)
    bl = None
    if alpha is not None and p.stable_slopes:
        # an active neuron (l > 0) is the identity y = z, and y ≥ α·z + (1 − α)·l holds on [l, u] too: with α < 1
        # the backward pass keeps the interval's l, which the identity forgets (a neuron proved active by a
        # tighter method would otherwise loosen the bounds after it)
        lo = p.pre[j].lower.unsqueeze(1)
        act = lo > 0
        sl = torch.where(act, alpha, sl)
        bl = torch.where(act, (1 - alpha) * lo, torch.zeros_like(alpha))
    # A⁺·sl + A⁻·su as A·sl + A⁻·(su − sl), and A⁻·bu as a batched matrix-vector product: three passes over A
    neg = A.clamp(max=0)
    Aj = (A * sl).addcmul_(neg, su - sl)
    B, K = A.shape[:2]
    c = torch.bmm(neg.reshape(B, K, -1), bu.expand(B, *bu.shape[1:]).reshape(B, -1, 1)).view(B, K)
    if bl is not None:
        c = c + (A.clamp(min=0) * bl).flatten(2).sum(2)
    return [(j, Aj, c)]


def _back_sshape(op, node, A, p):
    j = node.inputs[0]
    if p.record is not None:
        p.record[j] = A
    sl, bl, su, bu = (t.unsqueeze(1) for t in sshape_relaxation(isinstance(op, g.Tanh), p.pre[j]))
    pos = A >= 0
    return [(j, A * torch.where(pos, sl, su), (A * torch.where(pos, bl, bu)).flatten(2).sum(2))]


def _back_maxpool(op, node, A, p):
    j = node.inputs[0]
    return [(j, *_maxpool_backward(op, A, p.pre[j], p.shapes[j]))]


def _back_reshape(op, node, A, p):
    j = node.inputs[0]
    return [(j, A.reshape(*A.shape[:2], *p.shapes[j]), None)]


def _back_reindex(op: g.Reindex, node, A, p):
    j = node.inputs[0]
    n = math.prod(p.shapes[j])
    Aj = A.new_zeros(*A.shape[:2], n).index_add_(2, op.index, A.flatten(2))
    return [(j, Aj.view(*A.shape[:2], *p.shapes[j]), None)]


def _back_avgpool(op, node, A, p):
    j = node.inputs[0]
    return [(j, _avgpool_backward(op, A, p.shapes[j]), None)]


def _back_add(op, node, A, p):
    return [(k, A, None) for k in node.inputs]


RULES = {
    g.AffineOp: _back_affine, g.PiecewiseLinear: _back_kink, g.Sigmoid: _back_sshape, g.Tanh: _back_sshape,
    g.MaxPool2d: _back_maxpool, g.Flatten: _back_reshape, g.Unflatten: _back_reshape, g.Reindex: _back_reindex,
    g.AvgPool2d: _back_avgpool, g.Add: _back_add,
}
"""CROWN's backward rules (op type → rule); the ops it supports are derived from this table."""


def relu_relaxations(graph: g.Graph, pre: dict[int, Bounds]) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per ReLU (LeakyReLU) input node of ``pre``: (unstable mask, default lower slope, upper slope, upper
    intercept), shaped (B, 1, *shape) to broadcast over a pass's rows; what :func:`_backward` would compute on
    every pass."""
    out = {}
    for n in graph.nodes:
        if isinstance(n.op, g.PiecewiseLinear) and n.inputs[0] in pre:
            b = pre[n.inputs[0]]
            lo, up = b.lower.unsqueeze(1), b.upper.unsqueeze(1)
            out[n.inputs[0]] = ((lo < 0) & (up > 0), *relu_relaxation(Bounds(lo, up), n.op.negative_slope))
    return out


def _backward(graph: g.Graph, target: int, A: torch.Tensor, shapes: list[tuple[int, ...]],
              pre: dict[int, Bounds], input_set: InputSet, const: torch.Tensor | None = None,
              alphas: dict[int, torch.Tensor] | None = None, betas: dict[int, torch.Tensor] | None = None,
              record: dict[int, torch.Tensor] | None = None,
              relax: dict[int, tuple[torch.Tensor, ...]] | None = None, stable_slopes: bool = False) -> torch.Tensor:
    """Lower bound of ``A·x_target + const`` over the input set (A: (B, K, *shape of target)).

    ``alphas`` optionally gives, per ReLU (or LeakyReLU) input node, lower slopes in [0, 1] of the ReLU part, of
    shape (B, K, *shape), for the unstable neurons (α-CROWN); the default is CROWN's adaptive slope. With
    ``stable_slopes`` they also relax the active neurons (``l > 0``) as ``y ≥ α·z + (1 − α)·l`` (α = 1: exact).
    ``betas`` adds, per node, a term ``betas[i]·x_i`` to the bounded function (β-CROWN's Lagrangian for split
    constraints; see :mod:`certkit.verify.bab`). ``record``, if given, receives the coefficients on every
    activation's output (keyed by its input node) and on the input (key -1). The rules per op are in
    :data:`RULES`. ``relax``: the ReLU relaxations of ``pre`` from :func:`relu_relaxations`, when several passes
    share the same bounds."""
    B, K = A.shape[:2]
    coeff: dict[int, torch.Tensor] = {target: A}
    if const is None:
        const = torch.zeros(B, K, dtype=A.dtype, device=A.device)
    ctx = _Pass(shapes, pre, alphas, record, relax, stable_slopes)
    for i in range(target, -1, -1):
        if i not in coeff:
            continue
        Ai = coeff.pop(i)
        if betas is not None and i in betas:
            Ai = Ai + betas[i]
        node = graph.nodes[i]
        op = node.op
        if isinstance(op, g.Input):
            if record is not None:
                record[-1] = Ai
            return input_set.concretize(Ai, const)
        rule = g.rule_for(RULES, op, "CROWN", node.name)
        for j, Aj, c in rule(op, node, Ai, ctx):
            if c is not None:
                const = const + c
            coeff[j] = coeff[j] + Aj if j in coeff else Aj
    raise AssertionError("the backward pass did not reach the input")


def _conv_relu_conv_chain(graph: g.Graph, j: int):
    """(conv2, conv1, channel affines from the input) if node j is Conv2d ← ReLU ← Conv2d ← ElementwiseAffine* ←
    Input with plain convolutions (groups 1, dilation 1, zero padding), else None."""
    def plain(op):
        if not isinstance(op, g.Conv2d):
            return False
        m = op.module
        return m.groups == 1 and tuple(m.dilation) == (1, 1) and \
            m.padding_mode == "zeros" and not isinstance(m.padding, str)

    n2 = graph.nodes[j]
    if not plain(n2.op) or not isinstance(graph.nodes[n2.inputs[0]].op, g.ReLU):
        return None
    i1 = graph.nodes[n2.inputs[0]].inputs[0]
    n1 = graph.nodes[i1]
    if not plain(n1.op):
        return None
    affines, i = [], n1.inputs[0]
    while not isinstance(graph.nodes[i].op, g.Input):
        if not isinstance(graph.nodes[i].op, g.ElementwiseAffine):
            return None
        affines.append(graph.nodes[i].op)
        i = graph.nodes[i].inputs[0]
    return n2.op, i1, n1.op, affines[::-1]


def _patch_bounds(graph: g.Graph, j: int, idx: torch.Tensor, pre: dict[int, Bounds], input_set: InputSet,
                  max_elems: int):
    """CROWN bounds of the selected neurons of the second convolution of a conv-ReLU-conv chain, computed on
    patches: a neuron of conv2 sees a k2×k2 window of the ReLU layer and a K×K window of the input, with
    K = (k2 − 1)·s1 + k1, so the backward pass is done on those windows instead of on whole feature maps
    (the same bound as the dense pass; the input box is mapped through the leading Normalize/BN layers
    exactly). Returns (lower, upper), each (B, U), or None when the pattern or the input set does not fit."""
    chain = _conv_relu_conv_chain(graph, j)
    if chain is None or not input_set.is_box:
        return None
    conv2, relu_in, conv1, affines = chain
    m1, m2 = conv1.module, conv2.module
    (k1, s1, p1), (k2, s2, p2) = ((m.kernel_size[0], m.stride[0], m.padding[0]) for m in (m1, m2))
    if any(m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] or m.padding[0] != m.padding[1]
           for m in (m1, m2)):
        return None
    lo, up = input_set.lower, input_set.upper
    for op in affines:  # the box in the first convolution's input space
        a, b = op.forward(lo), op.forward(up)
        lo, up = torch.minimum(a, b), torch.maximum(a, b)
    dtype = pre[relu_in].lower.dtype
    lo, up = lo.to(dtype), up.to(dtype)
    K, S, P = (k2 - 1) * s1 + k1, s1 * s2, p1 + p2 * s1
    B, U = idx.shape
    H2, W2 = ((n + 2 * p2 - k2) // s2 + 1 for n in pre[relu_in].lower.shape[-2:])
    Hx, Wx = ((n + 2 * P - K) // S + 1 for n in lo.shape[-2:])
    if (Hx, Wx) != (H2, W2):
        return None
    sl, su, bu = (F.unfold(t, k2, padding=p2, stride=s2).transpose(1, 2) for t in relu_relaxation(pre[relu_in]))
    mid = F.unfold((lo + up) / 2, K, padding=P, stride=S).transpose(1, 2)  # (B, L, Cin·K·K)
    rad = F.unfold((up - lo) / 2, K, padding=P, stride=S).transpose(1, 2)
    W2f = conv2.weight.to(dtype).flatten(1)  # (out, Cin2·k2·k2)
    b2 = conv2.bias.to(dtype) if conv2.bias is not None else torch.zeros(W2f.shape[0], dtype=dtype, device=idx.device)
    b1 = conv1.bias.to(dtype) if conv1.bias is not None else torch.zeros(m1.out_channels, dtype=dtype,
                                                                          device=idx.device)
    b1f = b1.repeat_interleave(k2 * k2)
    L = H2 * W2
    chunk = max(1, max_elems // max(1, 2 * B * W2f.shape[1] * 4))
    lower, upper = [], []
    for c0 in range(0, U, chunk):
        sel = idx[:, c0:c0 + chunk]
        k = sel.shape[1]
        o, pos = sel // L, sel % L
        a = W2f[o]  # (B, k, Cin2·k2·k2)

        def take(t):
            return t.gather(1, pos.unsqueeze(2).expand(-1, -1, t.shape[2]))

        sl_p, su_p, bu_p = take(sl), take(su), take(bu)
        both = torch.cat([a, -a], 1)
        slope = torch.where(both >= 0, torch.cat([sl_p, sl_p], 1), torch.cat([su_p, su_p], 1))
        A1 = both * slope
        const = (both.clamp(max=0) * torch.cat([bu_p, bu_p], 1)).sum(2) + A1 @ b1f
        const = const + torch.cat([b2[o], -b2[o]], 1)
        Ax = F.conv_transpose2d(A1.reshape(-1, m1.out_channels, k2, k2), conv1.weight.to(dtype), stride=s1)
        Ax = Ax.reshape(B, 2 * k, -1)
        pos2 = torch.cat([pos, pos], 1).unsqueeze(2).expand(-1, -1, mid.shape[2])
        val = (Ax * mid.gather(1, pos2)).sum(2) - (Ax.abs() * rad.gather(1, pos2)).sum(2) + const
        lower.append(val[:, :k])
        upper.append(-val[:, k:])
    return torch.cat(lower, 1), torch.cat(upper, 1)


def _neuron_bounds(graph: g.Graph, j: int, mask: torch.Tensor, shapes: list[tuple[int, ...]],
                   pre: dict[int, Bounds], input_set: InputSet, max_elems: int, cutoff: float | None = None,
                   fallback: Bounds | None = None) -> tuple[torch.Tensor, ...]:
    """Lower and upper bounds of the neurons of node ``j`` selected per input by ``mask`` (B, n).

    Returns (idx, valid, lower, upper), each (B, U) with U the largest count of selected neurons of one input;
    ``idx`` pads with neuron 0 where ``valid`` is False. When node j is affine, its transposed map applied to
    the unit rows does not depend on the input: it is computed once for the union of selected neurons and
    gathered per input, which saves most of the work on conv layers. Past ``cutoff`` (a ``time.perf_counter()``
    value) the chunks not yet bounded take ``fallback``'s bounds (IBP's: sound, looser)."""
    B, n = mask.shape
    counts = mask.sum(1)
    U = int(counts.max())
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :U]
    valid = torch.arange(U, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    idx = torch.where(valid, order, torch.zeros_like(order))
    patched = _patch_bounds(graph, j, idx, pre, input_set, max_elems)
    if patched is not None:
        return idx, valid, *patched
    dtype = pre[j].lower.dtype if j in pre else input_set.x.dtype
    dev = mask.device
    node = graph.nodes[j]
    first = isinstance(node.op, g.AffineOp) and not isinstance(node.op, g.ElementwiseAffine)
    start = node.inputs[0] if first else j
    size = max(math.prod(shapes[k]) for k in range(start + 1)) * (2 if first else 1)
    chunk = max(1, max_elems // max(1, 2 * B * size))
    lower, upper = [], []
    union, inverse = torch.unique(idx, return_inverse=True) if first else (None, None)
    for s in range(0, U, chunk):
        sel = idx[:, s:s + chunk]
        k = sel.shape[1]
        if cutoff is not None and fallback is not None and time.perf_counter() > cutoff:
            lower.append(fallback.lower.flatten(1).gather(1, sel).to(dtype))
            upper.append(fallback.upper.flatten(1).gather(1, sel).to(dtype))
            continue
        if first:
            op = node.op
            uni = torch.unique(inverse[:, s:s + chunk])
            if isinstance(op, g.Linear):  # the unit rows' map is the weight's rows: no (U, n) identity
                rows = union[uni]
                M = op.weight[rows].to(dtype).view(1, len(uni), *shapes[start])
                c = (torch.zeros(len(uni), dtype=dtype, device=dev) if op.bias is None
                     else op.bias.reshape(-1)[rows].to(dtype)).unsqueeze(0)
            else:
                eye = torch.zeros(len(uni), n, dtype=dtype, device=dev)
                eye[torch.arange(len(uni)), union[uni]] = 1
                M, c = _affine_backward(op, eye.view(1, len(uni), *shapes[j]), shapes[start])
            pos = torch.searchsorted(uni, inverse[:, s:s + chunk].contiguous())
            A = M[0][pos]  # (B, k, *in_shape)
            c = c[0][pos]
        else:
            A = torch.zeros(B, k, n, dtype=dtype, device=dev)
            A.scatter_(2, sel.unsqueeze(2), 1)
            A = A.view(B, k, *shapes[j])
            c = torch.zeros(B, k, dtype=dtype, device=dev)
        both = torch.cat([A, -A], 1)
        lo = _backward(graph, start, both, shapes, pre, input_set, torch.cat([c, -c], 1))
        lower.append(lo[:, :k])
        upper.append(-lo[:, k:])
    return idx, valid, torch.cat(lower, 1), torch.cat(upper, 1)


def _optimized_rows(graph: g.Graph, j: int, idx: torch.Tensor, shapes: list[tuple[int, ...]],
                    pre: dict[int, Bounds], input_set: InputSet, lower: torch.Tensor, upper: torch.Tensor,
                    iterations: int, lr: float, deadline: float | None = None,
                    stable_slopes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """α-CROWN for intermediate neurons: the bounds of the selected neurons of node j (idx: (B, U)) with the lower
    slopes of every earlier ReLU optimised per row; returns the rowwise best of these and (lower, upper)."""
    B, U = idx.shape
    n = math.prod(shapes[j])
    dtype = lower.dtype
    rows = torch.zeros(B, U, n, dtype=dtype, device=idx.device)
    rows.scatter_(2, idx.unsqueeze(2), 1)
    both = torch.cat([rows, -rows], 1).view(B, 2 * U, *shapes[j])
    alphas = {}
    for node in graph.nodes[:j]:
        if isinstance(node.op, g.PiecewiseLinear):
            r = node.inputs[0]
            sl = relu_relaxation(pre[r])[0]
            alphas[r] = sl.unsqueeze(1).expand(B, 2 * U, *shapes[r]).clone().requires_grad_(True)
    best = torch.cat([lower, -upper], 1)
    if not alphas:
        return lower, upper
    best = _optimize_slopes(graph, j, both, shapes, pre, input_set, alphas, best, iterations, lr, deadline,
                            stable_slopes)
    return best[:, :U], -best[:, U:]


def _optimize_slopes(graph, target, rows, shapes, pre, input_set, alphas: dict[int, torch.Tensor],
                     best: torch.Tensor, iterations: int, lr: float, deadline: float | None = None,
                     stable_slopes: bool = False) -> torch.Tensor:
    """Projected Adam on the lower slopes ``alphas`` (clamped to [0, 1]) maximising the lower bounds of
    ``rows`` at ``target``; every iterate is sound, so the rowwise best (starting from ``best``) is returned.
    Only the slopes get gradients, never the model's weights. Stops early at ``deadline`` (perf_counter). With
    ``stable_slopes`` the active neurons get slopes too (see :func:`_backward`)."""
    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
    relax = relu_relaxations(graph, pre)  # the bounds stay fixed: their relaxations are computed once
    for _ in range(iterations):
        if deadline is not None and time.perf_counter() > deadline:
            break
        with torch.enable_grad():
            lo = _backward(graph, target, rows, shapes, pre, input_set, alphas=alphas, relax=relax,
                           stable_slopes=stable_slopes)
            grads = torch.autograd.grad(-lo.sum(), list(alphas.values()))
        best = torch.maximum(best, lo.detach())
        for a, gr in zip(alphas.values(), grads):
            a.grad = gr
        opt.step()
        with torch.no_grad():
            for a in alphas.values():
                a.clamp_(0, 1)
    with torch.no_grad():
        return torch.maximum(best, _backward(graph, target, rows, shapes, pre, input_set, alphas=alphas, relax=relax,
                                             stable_slopes=stable_slopes))


def _intersect(lo: torch.Tensor, up: torch.Tensor, lo2: torch.Tensor, up2: torch.Tensor):
    """[lo, up] ∩ [lo2, up2]. Both contain the value, so they overlap in exact arithmetic; where round-off makes
    the intersection empty (a point set: one bound a few ulps past the other), the span of the two crossing
    numbers is returned instead, so that lower ≤ upper always holds."""
    a, b = torch.maximum(lo, lo2), torch.minimum(up, up2)
    return torch.minimum(a, b), torch.maximum(a, b)


def _ibp_is_exact(graph: g.Graph, j: int) -> bool:
    """True if node j is the first Linear/Conv after the input, reached through per-element affine ops only:
    there IBP's bound (box: interval arithmetic; L2/L1: dual norm) is already the exact one."""
    node = graph.nodes[j]
    if not isinstance(node.op, g.AffineOp):
        return False
    i = node.inputs[0]
    while not isinstance(graph.nodes[i].op, g.Input):
        if not isinstance(graph.nodes[i].op, (g.ElementwiseAffine, g.Flatten, g.Unflatten, g.Reindex)):
            return False
        i = graph.nodes[i].inputs[0]
    return True


def crown_bounds(model, input_set: InputSet, spec: LinearSpec | None = None, intersect_ibp: bool = True,
                 return_all: bool = False, intermediate: str = "crown", max_elems: int = 2**25,
                 alpha_iterations: int = 20, deadline: float | None = None, bound_upper: bool = True,
                 cutoff: float | None = None, given: dict[int, Bounds] | None = None):
    """CROWN bounds on the model's output, or on the rows of ``spec``.

    Pre-activation bounds of every ReLU come from the same backward procedure (intersected with IBP when
    ``intersect_ibp``), or, with ``intermediate="ibp"``, from IBP alone: that is CROWN-IBP (Zhang et al. 2020),
    one backward pass from the output, cheap enough for training. ``intermediate="alpha"`` optimises the slopes
    for every intermediate neuron too (``alpha_iterations`` steps; only where the rows fit in ``max_elems``,
    CROWN elsewhere): the tightest intermediate bounds here, worth it before a MILP. With ``return_all``, the dict
    {node index: Bounds} of the pre-activation bounds. ``max_elems`` caps the size of one coefficient tensor
    (rows are processed in chunks), trading memory for speed. Past ``deadline`` (a ``time.perf_counter()``
    value) the intermediate slope optimisation stops and CROWN's bounds are used (every iterate is sound); past
    ``cutoff`` the neurons not yet bounded keep IBP's bounds (sound, looser), so that the call ends soon after.
    With ``bound_upper=False`` the output's upper bounds are IBP's (one backward pass of the rows instead of two:
    what training on the margins' lower bounds needs). ``given``: pre-activation bounds {node index: Bounds}
    already known to hold (e.g. tightened by a MILP); they are used as they are, the others are computed, and α
    then relaxes the active neurons too (a neuron proved active by a tighter method is the identity to CROWN,
    which forgets its interval; measured 15 % slower and no tighter on COLT's net without ``given``).
    """
    if intermediate not in ("crown", "ibp", "alpha"):
        raise ValueError(f"intermediate must be 'crown', 'ibp' or 'alpha', got {intermediate!r}")
    graph = g.to_graph(model)
    ibp_out, ibp_all = interval_bounds(graph, input_set, spec, return_all=True)  # checks that the spec fits
    dtype = ibp_out.lower.dtype
    with torch.no_grad():
        vals = graph.forward(input_set.x.to(ibp_out.lower.device, dtype), return_all=True)
    shapes = [tuple(v.shape[1:]) for v in vals]
    B = input_set.batch_size
    pre: dict[int, Bounds] = dict(given or {})

    def identity(shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        return torch.eye(n, dtype=dtype, device=ibp_out.lower.device).view(1, n, *shape).expand(B, -1, *shape)

    def bound_node(t: int, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([C, -C], 1)
        lo = _backward(graph, t, both, shapes, pre, input_set)
        K = C.shape[1]
        return lo[:, :K], -lo[:, K:]

    for node in graph.nodes:
        if isinstance(node.op, g.MaxPool2d):  # bounds of its input: IBP's, or a ReLU's image of its own
            j = node.inputs[0]
            src = graph.nodes[j]
            if isinstance(src.op, g.ReLU) and src.inputs[0] in pre:
                b = pre[src.inputs[0]]
                pre[j] = Bounds(torch.maximum(b.lower.clamp(min=0), ibp_all[j].lower),
                                torch.minimum(b.upper.clamp(min=0), ibp_all[j].upper))
            else:
                pre[j] = ibp_all[j]
            continue
        if isinstance(node.op, g.Activation) and node.inputs[0] not in pre:
            j = node.inputs[0]
            ibp = ibp_all[j]
            # only neurons that IBP cannot prove stable need linear bounds: a stable ReLU is relaxed exactly
            # (Sigmoid and Tanh neurons are never exact unless their interval is a point)
            relu = isinstance(node.op, g.PiecewiseLinear)
            mask = ((ibp.lower < 0) & (ibp.upper > 0) if relu else ibp.upper > ibp.lower).flatten(1)
            if intermediate == "ibp" or _ibp_is_exact(graph, j) or not mask.any():
                pre[j] = ibp
                continue
            if cutoff is not None and time.perf_counter() > cutoff:
                pre[j] = ibp
                continue
            idx, valid, lo, up = _neuron_bounds(graph, j, mask, shapes, pre, input_set, max_elems, cutoff, ibp)
            if intermediate == "alpha" and relu:
                earlier = sum(math.prod(shapes[n.inputs[0]]) for n in graph.nodes[:j]
                              if isinstance(n.op, g.PiecewiseLinear))
                late = deadline is not None and time.perf_counter() > deadline
                if B * 2 * idx.shape[1] * max(earlier, math.prod(shapes[j])) <= max_elems and not late:
                    lo, up = _optimized_rows(graph, j, idx, shapes, pre, input_set, lo.detach(), up.detach(),
                                             alpha_iterations, 0.1, deadline, stable_slopes=given is not None)
            lower, upper = ibp.lower.flatten(1).clone(), ibp.upper.flatten(1).clone()
            if intersect_ibp:
                lo, up = _intersect(lo, up, lower.gather(1, idx), upper.gather(1, idx))
            rows = torch.arange(B, device=idx.device).unsqueeze(1).expand_as(idx)
            lower[rows[valid], idx[valid]] = lo[valid]
            upper[rows[valid], idx[valid]] = up[valid]
            pre[j] = Bounds(lower.view_as(ibp.lower), upper.view_as(ibp.upper))
    out_shape = shapes[graph.output]
    if spec is None:
        lo, up = bound_node(graph.output, identity(out_shape))
        lo, up = lo.view(B, *out_shape), up.view(B, *out_shape)
    elif not bound_upper:  # IBP's upper bounds already hold the spec's d
        lo = _backward(graph, graph.output, spec.C.to(dtype), shapes, pre, input_set)
        lo, up = (lo if spec.d is None else lo + spec.d.to(dtype)), ibp_out.upper
    else:
        lo, up = bound_node(graph.output, spec.C.to(dtype))
        if spec.d is not None:
            lo, up = lo + spec.d.to(dtype), up + spec.d.to(dtype)
    if intersect_ibp:  # both hold; IBP also guards the output against round-off in a long backward pass
        lo, up = _intersect(lo, up, ibp_out.lower, ibp_out.upper)
    result = Bounds(lo, up)
    return (result, pre) if return_all else result


def alpha_crown_bounds(model, input_set: InputSet, spec: LinearSpec | None = None, iterations: int = 20,
                       lr: float = 0.1, bound_upper: bool = True, return_all: bool = False,
                       intermediate: str = "crown", deadline: float | None = None, cutoff: float | None = None,
                       given: dict[int, Bounds] | None = None):
    """α-CROWN (Xu et al. 2021; COLT §6 "learned slopes"): CROWN whose lower ReLU slopes are optimised for the
    output bounds by projected Adam, one slope per (input, output row, neuron).

    Intermediate bounds are CROWN's (or, with ``intermediate="alpha"``, optimised per neuron as well; see
    :func:`crown_bounds`) and stay fixed; the slopes start at CROWN's adaptive choice and every
    iterate gives a sound bound (any slope in [0, 1] is a valid lower relaxation), so the best one per row is
    kept: the result is never looser than CROWN's. With ``bound_upper=False`` only lower bounds are optimised
    and the upper bounds are CROWN's (half the work, enough to certify a margin spec). Past ``deadline`` (a
    ``time.perf_counter()`` value) the optimisation stops with the best slopes so far (still sound); ``cutoff`` and
    ``given`` are :func:`crown_bounds`'s.
    """
    graph = g.to_graph(model)
    with torch.no_grad():
        base, pre = crown_bounds(graph, input_set, spec, return_all=True, intermediate=intermediate,
                                 alpha_iterations=iterations, deadline=deadline, cutoff=cutoff, given=given)
    dtype = base.lower.dtype
    x = input_set.x.to(base.lower.device, dtype)
    with torch.no_grad():
        shapes = [tuple(v.shape[1:]) for v in graph.forward(x, return_all=True)]
    B = input_set.batch_size
    out_shape = shapes[graph.output]
    if spec is None:
        n = math.prod(out_shape)
        C = torch.eye(n, dtype=dtype, device=x.device).view(1, n, *out_shape).expand(B, -1, *out_shape)
    else:
        C = spec.C.to(dtype)
    rows = torch.cat([C, -C], 1) if bound_upper else C
    K = rows.shape[1]
    alphas: dict[int, torch.Tensor] = {}
    for node in graph.nodes:
        if isinstance(node.op, g.PiecewiseLinear):
            j = node.inputs[0]
            sl = relu_relaxation(pre[j])[0]
            alphas[j] = sl.unsqueeze(1).expand(B, K, *shapes[j]).clone().requires_grad_(True)
    with torch.no_grad():
        best = _backward(graph, graph.output, rows, shapes, pre, input_set)
    if alphas and iterations > 0:
        best = _optimize_slopes(graph, graph.output, rows, shapes, pre, input_set, alphas, best, iterations, lr,
                                deadline, stable_slopes=given is not None)
    k = C.shape[1]
    lower = torch.maximum(best[:, :k], base.lower.reshape(B, k))
    upper = torch.minimum(-best[:, k:], base.upper.reshape(B, k)) if bound_upper else base.upper.reshape(B, k)
    if spec is None:
        lower, upper = lower.view(B, *out_shape), upper.view(B, *out_shape)
    elif spec.d is not None:
        # base already includes d; best does not
        lower = torch.maximum(best[:, :k] + spec.d.to(dtype), base.lower)
        upper = (torch.minimum(-best[:, k:] + spec.d.to(dtype), base.upper) if bound_upper else base.upper)
    result = Bounds(lower, upper)
    return (result, pre) if return_all else result
