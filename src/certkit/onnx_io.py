"""ONNX networks as PyTorch modules that certkit's graph understands.

``load_onnx(path)`` reads an ONNX file (optionally gzip-compressed) and builds an :class:`OnnxModel`: a module
that runs the ONNX nodes in order, each as a PyTorch layer (Gemm/MatMul+Add → Linear, Conv → Conv2d,
ConvTranspose → ConvTranspose2d, BatchNormalization → BatchNorm2d, Relu/LeakyRelu/Sigmoid/Tanh,
MaxPool/AveragePool, Add of two tensors → a residual sum, Add/Sub/Mul/Div/Neg with constants of any
broadcastable shape → :class:`~certkit.nn.Affine` (per channel: Normalize), Flatten/Reshape/Transpose/Squeeze/
Unsqueeze → Flatten or a :class:`~certkit.nn.Reindex` of the entries, Identity/Dropout and a Pad that pads
nothing → identity). Shape arithmetic (Shape, Gather, Unsqueeze, Concat, Constant, ...) is folded into
constants at load time, for the input shape declared in the file. Any other op raises
:class:`~certkit.graph.UnsupportedOpError` naming the node.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certkit.errors import OnnxError
from certkit.graph import UnsupportedOpError
from certkit.nn import Affine, Normalize, Reindex


class _Sum(nn.Module):
    def forward(self, a, b):
        return a + b


class OnnxModel(nn.Module):
    """The converted network: ``steps`` run in order on named tensors; ``input_shape`` is the ONNX input's
    shape including its batch dimension."""

    def __init__(self, steps: list[tuple[nn.Module, list[str], str]], input_name: str, output_name: str,
                 input_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList([m for m, _, _ in steps])
        self.wiring = [(ins, out) for _, ins, out in steps]
        self.input_name, self.output_name, self.input_shape = input_name, output_name, tuple(input_shape)

    def forward(self, x):
        env = {self.input_name: x}
        for layer, (ins, out) in zip(self.layers, self.wiring):
            env[out] = layer(*[env[i] for i in ins])
        return env[self.output_name]


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fold(op: str, args: list[np.ndarray], at: dict, shapes: list) -> np.ndarray:
    """Evaluate a shape-arithmetic node on constants."""
    if op == "Constant":
        import onnx

        return onnx.numpy_helper.to_array(at["value"]) if "value" in at else np.array(at.get("value_float"))
    if op == "Shape":
        return np.array(shapes[0], dtype=np.int64)
    if op == "Gather":
        return np.take(args[0], args[1], axis=at.get("axis", 0))
    if op == "Unsqueeze":
        axes = at["axes"] if "axes" in at else list(args[1])
        out = args[0]
        for a in sorted(axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Squeeze":
        axes = at.get("axes", list(args[1]) if len(args) > 1 else None)
        return np.squeeze(args[0], axis=tuple(axes) if axes is not None else None)
    if op == "Concat":
        return np.concatenate(args, axis=at.get("axis", 0))
    if op in ("Add", "Sub", "Mul", "Div"):
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        return f(args[0], args[1])
    if op in ("Cast", "Identity"):
        return args[0]
    if op == "Reshape":
        return args[0].reshape(args[1])
    if op == "Transpose":
        return np.transpose(args[0], at.get("perm"))
    raise UnsupportedOpError(f"ONNX op {op} on constants is not supported")


def _affine(op: str, c: np.ndarray, shape: tuple[int, ...], const_first: bool, where: str) -> nn.Module:
    """``x ∘ c`` (or ``c ∘ x``) for ∘ in Add/Sub/Mul/Div as an elementwise affine module: Normalize when the
    constant is per channel, :class:`Affine` for any other shape that broadcasts against the batch."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(shape) or any(a not in (1, b) for a, b in zip(c.shape[::-1], shape[::-1])) or \
            (c.ndim == len(shape) and c.shape[0] != 1):
        raise UnsupportedOpError(f"{where}: a constant of shape {c.shape} does not broadcast against one input "
                                 f"of the batch {shape}")
    if op == "Div" and const_first:
        raise UnsupportedOpError(f"{where}: constant / tensor is not an affine map and is not supported")
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)  # aligned with the batch's axes
    if op == "Div" and (c == 0).any():
        raise UnsupportedOpError(f"{where}: division by a constant with zeros")
    per = _channel_constant(c, shape)
    if per is not None and op in ("Sub", "Div") and not const_first and (op == "Sub" or (per > 0).all()):
        mean, std = (per, np.ones_like(per)) if op == "Sub" else (np.zeros_like(per), per)
        return Normalize(mean.tolist(), std.tolist())
    one, zero = np.ones_like(c), np.zeros_like(c)
    if op == "Div":
        scale, shift = 1 / c, zero
    else:
        scale, shift = {"Add": (one, c), "Mul": (c, zero), "Sub": (-one, c) if const_first else (one, -c)}[op]
    return Affine(torch.as_tensor(scale), torch.as_tensor(shift))  # float64 here; the model's dtype later


def _rearrange(op: str, at: dict, args: list, shape: tuple[int, ...], where: str) -> nn.Module:
    """A shape-only op as Flatten (when it flattens each input of the batch) or a :class:`Reindex`. The batch
    axis must stay first and keep its size."""
    x = torch.zeros(shape)
    try:
        if op == "Flatten":
            axis = at.get("axis", 1)
            fn = (lambda t: t.flatten(1)) if axis == 1 else (lambda t: t.reshape(math.prod(t.shape[:axis]), -1))
        elif op == "Reshape":
            target = [int(v) for v in args[0]]
            target = [shape[i] if v == 0 and not at.get("allowzero", 0) else v for i, v in enumerate(target)]
            fn = lambda t: t.reshape(target)  # noqa: E731
        elif op == "Transpose":
            perm = at.get("perm", list(range(len(shape)))[::-1])
            fn = lambda t: t.permute(*perm)  # noqa: E731
        elif op == "Squeeze":
            axes = at.get("axes", list(args[0]) if args and args[0] is not None else None)
            axes = [a % len(shape) for a in axes] if axes is not None else [i for i, n in enumerate(shape) if n == 1]
            fn = lambda t: t.reshape([n for i, n in enumerate(t.shape) if i not in axes])  # noqa: E731
        else:  # Unsqueeze
            axes = at.get("axes", list(args[0]) if args and args[0] is not None else [])
            rank = len(shape) + len(axes)
            axes = sorted(a % rank for a in axes)

            def fn(t):
                for a in axes:
                    t = t.unsqueeze(a)
                return t
        y = fn(x)
    except (RuntimeError, IndexError, TypeError) as e:
        raise OnnxError(f"{where}: cannot apply it to a tensor of shape {shape} ({e})") from e
    batch_moved = (op == "Transpose" and perm[0] != 0) or (op in ("Squeeze", "Unsqueeze") and 0 in axes)
    if batch_moved or y.dim() == 0 or y.shape[0] != shape[0]:
        raise UnsupportedOpError(f"{where}: {op} from {shape} to {tuple(y.shape)} moves the batch axis")
    if y.dim() == 2 and y.shape[1] == math.prod(shape[1:]) and op != "Transpose":
        return nn.Flatten() if len(shape) > 2 else nn.Identity()
    return Reindex.of(fn, tuple(shape[1:]))  # ``shape`` is the probe's: a batch of one


def _channel_constant(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-channel values of a constant that broadcasts per channel over a tensor of ``shape`` (B, C, ...),
    or None."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(shape[1] if len(shape) > 1 else 1, float(c.reshape(())))
    squeezed = c.reshape(-1)
    if len(shape) > 1 and squeezed.size == shape[1]:
        expect = [1] * len(shape)
        expect[1] = shape[1]
        if c.ndim <= len(shape) and list(c.shape) == expect[len(shape) - c.ndim:]:
            return squeezed
    return None


def load_onnx(path: str | Path) -> OnnxModel:
    """Load an ONNX network (``.onnx`` or ``.onnx.gz``) as an :class:`OnnxModel` in eval mode."""
    from certkit.errors import require

    onnx = require("onnx", "onnx", "loading ONNX networks")
    from onnx import numpy_helper

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ONNX file at {path}")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise OnnxError(f"{path} is not a complete gzip file ({e}): truncated or not gzip-compressed") from e
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises various errors on corrupt files
        raise OnnxError(f"{path} is not a readable ONNX file: {e}") from e
    g = proto.graph
    if not g.node:
        raise OnnxError(f"{path} holds no ONNX graph (an empty or non-ONNX file)")
    const: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in const]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UnsupportedOpError(f"{path}: certkit takes networks with one input and one output, this one has "
                                 f"{len(inputs)} and {len(g.output)}")
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim]
    vector = len(dims) < 2  # an input without a batch axis (e.g. nn4sys's [1]): one is added
    if vector:
        dims = [1] + (dims or [1])
    in_name = inputs[0].name
    steps: list[tuple[nn.Module, list[str], str]] = []
    uses: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    # a float64 network (e.g. nn4sys's: in float32 its outputs collapse to 0) stays float64
    dtype = torch.float64 if inputs[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE else torch.float32
    values = {in_name: torch.zeros(*dims, dtype=dtype)}  # a probe input: static shapes of every tensor

    def add(module: nn.Module, ins: list[str], out: str) -> None:
        module.to(dtype).eval()
        try:
            with torch.no_grad():
                values[out] = module(*[values[i] for i in ins])
        except RuntimeError as e:  # e.g. a weight matrix that does not fit its input
            shapes = ", ".join(str(tuple(values[i].shape)) for i in ins)
            raise OnnxError(f"{path}: {where}: the node's constants do not fit its input of shape {shapes} ({e})") \
                from e
        steps.append((module, ins, out))

    def t(a) -> torch.Tensor:
        return torch.as_tensor(np.array(a, dtype=np.float64)).to(dtype)

    for node in g.node:
        op, at = node.op_type, _attrs(node)
        ins = [i for i in node.input if i]
        out = node.output[0]
        dyn = [i for i in ins if i in values]
        where = f"ONNX node {node.name or out} ({op})"
        missing = [i for i in ins if i not in values and i not in const]
        if missing:
            raise OnnxError(f"{path}: {where} reads {', '.join(missing)}, which no earlier node or constant defines")
        if not dyn:  # shape arithmetic and constants
            shapes = [tuple(values[i].shape) if i in values else None for i in ins]
            try:
                const[out] = _fold(op, [const.get(i) for i in ins], at, shapes)
            except UnsupportedOpError:
                raise
            except (ValueError, IndexError, KeyError, TypeError) as e:
                raise OnnxError(f"{path}: {where}: cannot evaluate it on constants ({e})") from e
            continue
        if op == "Shape":
            const[out] = np.array(values[ins[0]].shape, dtype=np.int64)
            continue
        x = ins[0]
        if op == "Gemm":
            if ins[0] not in values or ins[1] not in const:
                raise UnsupportedOpError(f"{where}: only Gemm of a tensor with a constant matrix is supported")
            if at.get("transA", 0) and values[x].shape[0] != 1:
                raise UnsupportedOpError(f"{where}: transA on a batch of more than one is not supported")
            if at.get("transA", 0):  # a (1, n) input: its transpose is a column, as one input it is the same vector
                raise UnsupportedOpError(f"{where}: transA is not supported")
            w = const[ins[1]] * at.get("alpha", 1.0)
            w = w if at.get("transB", 0) else w.T
            lin = nn.Linear(w.shape[1], w.shape[0], bias=len(ins) > 2)
            lin.weight.data = t(w)
            if len(ins) > 2:
                lin.bias.data = t(np.broadcast_to(const[ins[2]] * at.get("beta", 1.0), (w.shape[0],)))
            add(lin, [x], out)
        elif op == "MatMul":
            if vector and ins[0] in const and ins[1] in values and values[ins[1]].dim() == 2:
                w, x = const[ins[0]], ins[1]  # W @ v for a vector v (stored as a batch of one row)
            elif ins[1] in const and values[x].dim() >= 2 and np.ndim(const[ins[1]]) == 2:
                w = const[ins[1]].T
            else:
                raise UnsupportedOpError(f"{where}: only (batch, ..., n) @ constant matrix is supported")
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data = t(w)
            add(lin, [x], out)
        elif op in ("Add", "Sub", "Mul", "Div") and all(i in values for i in ins):
            if op != "Add":
                raise UnsupportedOpError(f"{where}: {op} of two computed tensors is not supported")
            add(_Sum(), ins, out)
        elif op in ("Add", "Sub", "Mul", "Div"):
            c_name = ins[1] if ins[0] in values else ins[0]
            x = ins[0] if ins[0] in values else ins[1]
            c = const[c_name]
            shape = tuple(values[x].shape)
            prev = steps[-1] if steps and steps[-1][2] == x and uses[x] == 1 else None
            if op in ("Add", "Sub") and ins[0] == x and prev is not None and isinstance(prev[0], nn.Linear) \
                    and np.asarray(c).size in (1, shape[-1]) and len(shape) == 2:
                lin = prev[0]  # x W + b + c: the constant joins the Linear's bias
                b = np.broadcast_to(np.asarray(c, np.float64) * (1.0 if op == "Add" else -1.0), (shape[-1],))
                new = nn.Linear(lin.in_features, lin.out_features, bias=True)
                new.weight.data = lin.weight.data.clone()
                new.bias.data = (lin.bias.data if lin.bias is not None else torch.zeros(shape[-1])) + t(b)
                steps.pop()
                add(new, prev[1], out)
                continue
            add(_affine(op, c, shape, const_first=ins[0] == c_name, where=where), [x], out)
        elif op == "Neg":
            add(Affine(-1.0, 0.0), [x], out)
        elif op == "Conv":
            w = const[ins[1]]
            pads = at.get("pads", [0] * 4)
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise UnsupportedOpError(f"{where}: asymmetric padding {pads} is not supported")
            conv = nn.Conv2d(w.shape[1] * at.get("group", 1), w.shape[0], tuple(w.shape[2:]),
                             tuple(at.get("strides", [1, 1])), (pads[0], pads[1]),
                             tuple(at.get("dilations", [1, 1])), at.get("group", 1), bias=len(ins) > 2)
            conv.weight.data = t(w)
            if len(ins) > 2:
                conv.bias.data = t(const[ins[2]])
            add(conv, [x], out)
        elif op == "ConvTranspose":
            w = const[ins[1]]
            pads = at.get("pads", [0] * 4)
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise UnsupportedOpError(f"{where}: asymmetric padding {pads} is not supported")
            conv = nn.ConvTranspose2d(w.shape[0], w.shape[1] * at.get("group", 1), tuple(w.shape[2:]),
                                      tuple(at.get("strides", [1, 1])), (pads[0], pads[1]),
                                      tuple(at.get("output_padding", [0, 0])), at.get("group", 1),
                                      bias=len(ins) > 2, dilation=tuple(at.get("dilations", [1, 1])))
            conv.weight.data = t(w)
            if len(ins) > 2:
                conv.bias.data = t(const[ins[2]])
            add(conv, [x], out)
        elif op == "BatchNormalization":
            scale, bias, mean, var = (const[i] for i in ins[1:5])
            bn = nn.BatchNorm2d(len(scale), eps=at.get("epsilon", 1e-5))
            bn.weight.data, bn.bias.data = t(scale), t(bias)
            bn.running_mean.data, bn.running_var.data = t(mean), t(var)
            add(bn, [x], out)
        elif op in ("Relu", "Sigmoid", "Tanh"):
            add({"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}[op](), [x], out)
        elif op == "LeakyRelu":
            a = float(at.get("alpha", 0.01))
            if not 0.0 <= a <= 1.0:
                raise UnsupportedOpError(f"{where}: LeakyRelu with alpha={a} (only alphas in [0, 1])")
            add(nn.LeakyReLU(a), [x], out)
        elif op in ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"):
            add(_rearrange(op, at, [const.get(i) for i in ins[1:]], tuple(values[x].shape), where), [x], out)
        elif op == "Pad":
            pads = at.get("pads", list(const[ins[1]]) if len(ins) > 1 and ins[1] in const else None)
            if pads is None or any(int(p) != 0 for p in pads):
                raise UnsupportedOpError(f"{where}: only a Pad that pads nothing is supported (pads={pads})")
            add(nn.Identity(), [x], out)
        elif op in ("MaxPool", "AveragePool"):
            pads = at.get("pads", [0] * 4)
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise UnsupportedOpError(f"{where}: asymmetric padding {pads} is not supported")
            k, s = tuple(at["kernel_shape"]), tuple(at.get("strides", [1] * len(at["kernel_shape"])))  # ONNX: 1
            pool = nn.MaxPool2d(k, s, (pads[0], pads[1])) if op == "MaxPool" else \
                nn.AvgPool2d(k, s, (pads[0], pads[1]), count_include_pad=bool(at.get("count_include_pad", 0)))
            add(pool, [x], out)
        elif op in ("Identity", "Dropout"):
            add(nn.Identity(), [x], out)
        else:
            raise UnsupportedOpError(f"{where}: ONNX op {op} is not supported")
    out_name = g.output[0].name
    if out_name not in values:
        raise UnsupportedOpError(f"{path}: the output {out_name} does not depend on the input")
    return OnnxModel(steps, in_name, out_name, tuple(dims)).eval()
