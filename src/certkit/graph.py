"""A model as a DAG of primitive ops, the common language of every abstract domain.

``to_graph(model)`` traces a PyTorch module with ``torch.fx`` and maps each call to one primitive op:

=================  ==========================================================================
op                 from
=================  ==========================================================================
Linear             nn.Linear (on the last axis, any rank)
Conv2d             nn.Conv2d
ConvTranspose2d    nn.ConvTranspose2d
ElementwiseAffine  certkit.nn.Normalize, nn.BatchNorm1d/2d in eval mode (per channel), certkit.nn.Affine
                   (``y = s·x + t`` with constants of any broadcastable shape: ONNX Add/Sub/Mul/Div/Neg)
Flatten            nn.Flatten, torch.flatten, x.flatten(1), x.view(B, -1), x.reshape(B, -1)
Unflatten          nn.Unflatten(1, shape) (a decoder's vector -> image)
Reindex            certkit.nn.Reindex: a fixed rearrangement of each input's entries (ONNX Transpose,
                   Reshape, Squeeze, Unsqueeze): ``y.flatten(1) = x.flatten(1)[:, index]``
ReLU/LeakyReLU     the modules and their functional forms (LeakyReLU with a negative slope in [0, 1])
Sigmoid/Tanh       the modules and their functional forms
AvgPool2d          nn.AvgPool2d
MaxPool2d          nn.MaxPool2d
Add                ``a + b`` of two traced tensors (residual connections)
=================  ==========================================================================

Each abstract domain keeps a table from op types to its transfer rules; :func:`rule_for` looks an op up
(along its class hierarchy) and names the ops the domain supports when it has no rule, and
:func:`supported_ops` lists them, so the list of what a domain supports is derived from its table.

Ops read their parameters from the live modules at call time, so a graph stays valid while the model
trains, and ``torch.func.functional_call`` can swap the weights (as the Bayesian methods do). Anything
else raises :class:`UnsupportedOpError` naming the module or function: an unknown op is never treated
as the identity.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from certkit.errors import CertkitError
from certkit.nn import Affine, Normalize
from certkit.nn import Reindex as ReindexModule


class UnsupportedOpError(CertkitError, TypeError):
    """A module or function that certkit cannot bound."""


# -------------------------------------------------------------------------------------------- ops
class Op:
    """A primitive op. ``forward`` is the concrete semantics that every abstract domain over-approximates."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class AffineOp(Op):
    """``y = A(x) + b`` for a linear map A with weight ``W``; ``apply(x, W', b')`` evaluates the same
    structure with another weight (``|W|`` for interval radii, ``W²`` for row norms)."""

    module: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def bias_map(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The bias as a tensor of the output's ``shape`` (one input, no batch axis)."""
        b = self.bias
        return b.view((-1,) + (1,) * (len(shape) - 1)).expand(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.weight, self.bias)


@dataclass(repr=False)
class Linear(AffineOp):
    module: nn.Linear

    def apply(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def bias_map(self, shape):
        return self.bias.expand(shape)


@dataclass(repr=False)
class Conv2d(AffineOp):
    module: nn.Conv2d

    def apply(self, x, weight, bias):
        m = self.module
        if m.padding_mode != "zeros":
            raise UnsupportedOpError(f"Conv2d with padding_mode={m.padding_mode!r} (only 'zeros')")
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)


@dataclass(repr=False)
class ConvTranspose2d(AffineOp):
    module: nn.ConvTranspose2d

    def apply(self, x, weight, bias):
        m = self.module
        return F.conv_transpose2d(x, weight, bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)


@dataclass(repr=False)
class ElementwiseAffine(AffineOp):
    """``y = s·x + t`` elementwise: per channel (s, t of shape (C,), channel axis 1) for Normalize and BatchNorm
    with its running statistics; any shape that broadcasts against one input (with a leading axis of size 1)
    for :class:`certkit.nn.Affine`."""

    module: nn.Module

    def bias_map(self, shape: tuple[int, ...]) -> torch.Tensor:
        return _broadcast(self.bias, len(shape) + 1)[0].expand(shape)

    @property
    def weight(self) -> torch.Tensor:
        return self.scale_shift()[0]

    @property
    def bias(self) -> torch.Tensor:
        return self.scale_shift()[1]

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        if isinstance(m, (Normalize, Affine)):
            return m.scale_shift()
        if m.training:
            raise UnsupportedOpError(
                f"{type(m).__name__} in training mode uses batch statistics and cannot be bounded"
                " per input: call model.eval() first"
            )
        if m.running_mean is None:
            raise UnsupportedOpError(f"{type(m).__name__} without running statistics (track_running_stats=False)")
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        shift = -m.running_mean * scale
        if m.bias is not None:
            shift = shift + m.bias
        return scale, shift

    def apply(self, x, weight, bias):
        y = x * _broadcast(weight, x.dim())
        return y if bias is None else y + _broadcast(bias, x.dim())


def _broadcast(t: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-channel vector (1-D) viewed along axis 1 of a ``dim``-D batch; other constants as they are."""
    return t.view((1, -1) + (1,) * (dim - 2)) if t.dim() == 1 else t


@dataclass(repr=False)
class Flatten(Op):
    start_dim: int = 1

    def forward(self, x):
        return torch.flatten(x, self.start_dim)


@dataclass(repr=False)
class Unflatten(Op):
    """Reshape the features of each input (B, n) -> (B, *shape), e.g. in a decoder."""

    shape: tuple[int, ...] = ()

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


@dataclass(repr=False)
class Reindex(Op):
    """A fixed rearrangement of each input's entries (transpose, reshape, squeeze): entry k of the flattened
    output is entry ``index[k]`` of the flattened input; ``shape`` is one output's shape."""

    module: ReindexModule

    @property
    def index(self) -> torch.Tensor:
        return self.module.index

    def forward(self, x):
        return self.module(x)


@dataclass(repr=False)
class Activation(Op):
    """A monotone elementwise nonlinearity."""

    fn: object = None

    def forward(self, x):
        return self.fn(x)


@dataclass(repr=False)
class PiecewiseLinear(Activation):
    """``max(z, a·z)`` with a negative slope ``a`` in [0, 1]: ReLU (a = 0) and LeakyReLU. Every domain relaxes
    both through :func:`certkit.bounds.relax.kink_relaxation`, and branch and bound splits them at 0."""

    negative_slope: float = 0.0


class ReLU(PiecewiseLinear):
    def __init__(self):
        super().__init__(torch.relu, 0.0)


class LeakyReLU(PiecewiseLinear):
    def __init__(self, negative_slope: float = 0.01):
        a = float(negative_slope)
        if not 0.0 <= a <= 1.0:
            raise UnsupportedOpError(f"LeakyReLU with negative_slope={a} (only slopes in [0, 1] are supported)")
        super().__init__(lambda x: F.leaky_relu(x, a), a)

    def __repr__(self) -> str:
        return f"LeakyReLU({self.negative_slope})"


class Sigmoid(Activation):
    def __init__(self):
        super().__init__(torch.sigmoid)


class Tanh(Activation):
    def __init__(self):
        super().__init__(torch.tanh)


@dataclass(repr=False)
class AvgPool2d(Op):
    module: nn.AvgPool2d

    def forward(self, x):
        return self.module(x)


@dataclass(repr=False)
class MaxPool2d(Op):
    module: nn.MaxPool2d

    def forward(self, x):
        if self.module.return_indices:
            raise UnsupportedOpError("MaxPool2d(return_indices=True)")
        return self.module(x)


class Add(Op):
    def forward(self, a, b):
        return a + b


class Input(Op):
    def forward(self, x):
        return x


OP_TYPES: tuple[type[Op], ...] = (
    Input, Linear, Conv2d, ConvTranspose2d, ElementwiseAffine, Flatten, Unflatten, Reindex, ReLU, LeakyReLU, Sigmoid,
    Tanh, AvgPool2d, MaxPool2d, Add,
)


def rule_for(table: dict, op: Op, domain: str, where: str = ""):
    """The rule of ``table`` for ``op``'s class or its nearest base class; an :class:`UnsupportedOpError` naming
    the domain, the node and the ops the domain supports when there is none."""
    for cls in type(op).__mro__:
        if cls in table:
            return table[cls]
    at = f" (node '{where}')" if where else ""
    raise UnsupportedOpError(f"{domain} has no rule for {op!r}{at}; it supports: "
                             + ", ".join(supported_ops(table)))


def supported_ops(table: dict) -> list[str]:
    """The names of the op types (of :data:`OP_TYPES`) that ``table`` has a rule for."""
    return [t.__name__ for t in OP_TYPES if any(c in table for c in t.__mro__)]


# ------------------------------------------------------------------------------------------ graph
@dataclass
class Node:
    op: Op
    inputs: tuple[int, ...]
    name: str


@dataclass
class Graph:
    """Nodes in topological order; node 0 is the input, ``output`` the index of the result."""

    nodes: list[Node]
    output: int
    users: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.users = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                self.users[j].append(i)

    def forward(self, x: torch.Tensor, return_all: bool = False):
        """Concrete evaluation (equals the model's forward); with return_all, every node's value."""
        vals: list[torch.Tensor] = []
        for n in self.nodes:
            vals.append(x if isinstance(n.op, Input) else n.op.forward(*(vals[j] for j in n.inputs)))
        return vals if return_all else vals[self.output]

    def forward_from(self, start: int, value: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        """Continue the evaluation from node ``start`` holding ``value`` (e.g. a latent adversarial point) up to
        node ``stop`` (default: the output). Nodes after ``start`` must not read nodes before it."""
        vals: dict[int, torch.Tensor] = {start: value}
        stop = self.output if stop is None else stop
        for i in range(start + 1, stop + 1):
            n = self.nodes[i]
            if any(j not in vals for j in n.inputs):
                raise ValueError(f"node '{n.name}' reads a node before the start node {start}")
            vals[i] = n.op.forward(*(vals[j] for j in n.inputs))
        return vals[stop]

    def __repr__(self) -> str:
        lines = [f"{i:3d} {n.name:30s} {n.op!r:18s} <- {list(n.inputs)}" for i, n in enumerate(self.nodes)]
        return "Graph(\n" + "\n".join(lines) + f"\n  output={self.output})"


def prefix(graph: Graph, node: int) -> tuple[Graph, list[int]]:
    """The sub-graph that computes node ``node`` (it and its ancestors, in the same order; ``node`` is its
    output) and, per sub-graph node, its index in ``graph``."""
    keep = {node}
    for i in range(node, -1, -1):
        if i in keep:
            keep.update(graph.nodes[i].inputs)
    old = sorted(keep)
    new = {o: k for k, o in enumerate(old)}
    nodes = [Node(graph.nodes[o].op, tuple(new[j] for j in graph.nodes[o].inputs), graph.nodes[o].name) for o in old]
    return Graph(nodes, new[node]), old


class Truncated(nn.Module):
    """``model`` evaluated up to node ``node`` of its graph, whose value, flattened, is the output: a network of
    its own for the bounds and the searches (its graph is :func:`prefix`'s and a Flatten), sharing the model's
    parameters. ``index[k]`` is the model's node index of the truncated graph's node k (the Flatten: None)."""

    def __init__(self, model: nn.Module, node: int):
        super().__init__()
        self.model, self.node = model, node
        graph, index = prefix(to_graph(model), node)
        self.graph = Graph([*graph.nodes, Node(Flatten(), (graph.output,), "flatten")], len(graph.nodes))
        self.index = [*index, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the model's own graph (a float64 copy re-traces its converted model), evaluated up to the node only
        return to_graph(self.model).forward_from(0, x, stop=self.node).flatten(1)


_MODULE_OPS = {
    nn.Linear: Linear,
    nn.Conv2d: Conv2d,
    nn.ConvTranspose2d: ConvTranspose2d,
    Normalize: ElementwiseAffine,
    Affine: ElementwiseAffine,
    ReindexModule: Reindex,
    nn.BatchNorm1d: ElementwiseAffine,
    nn.BatchNorm2d: ElementwiseAffine,
    nn.ReLU: lambda m: ReLU(),
    nn.LeakyReLU: lambda m: LeakyReLU(m.negative_slope),
    nn.Sigmoid: lambda m: Sigmoid(),
    nn.Tanh: lambda m: Tanh(),
    nn.AvgPool2d: AvgPool2d,
    nn.MaxPool2d: MaxPool2d,
    nn.Flatten: lambda m: Flatten(m.start_dim) if m.end_dim == -1 else None,
    nn.Unflatten: lambda m: Unflatten(tuple(m.unflattened_size)) if m.dim in (1, -1) else None,
}
_IDENTITY_MODULES = (nn.Identity,)
_FUNCTION_OPS = {
    torch.relu: ReLU, F.relu: ReLU, torch.sigmoid: Sigmoid, torch.tanh: Tanh, F.sigmoid: Sigmoid, F.tanh: Tanh,
}
_METHOD_OPS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def _leaky_slope(n: torch.fx.Node) -> float:
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("negative_slope", 0.01)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Normalize, Affine, ReindexModule)) or super().is_leaf_module(m, qualname)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def to_graph(model: nn.Module | Graph) -> Graph:
    """Trace ``model`` into a :class:`Graph` (cached per model object)."""
    if isinstance(model, Graph):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, Truncated):  # its own graph (a copy of it holds a copy of the graph)
        return model.graph
    if model in _CACHE:
        return _CACHE[model]
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as e:  # fx cannot trace data-dependent control flow etc.
        raise UnsupportedOpError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from e
    graph = _convert(model, fx_graph)
    _CACHE[model] = graph
    return graph


def _flatten_args(n: torch.fx.Node) -> int | None:
    """start_dim if a view/reshape/flatten call flattens everything after the batch axis, else None."""
    if n.target == "flatten" or n.target is torch.flatten:
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
        return start if end == -1 and start >= 1 else None
    shape = n.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 2 and shape[1] == -1:
        first = shape[0]
        if isinstance(first, torch.fx.Node) and first.op == "call_method" and first.target == "size":
            return 1 if (first.args[1:] or first.kwargs.get("dim")) in ((0,), 0) else None
        if isinstance(first, torch.fx.Node) and first.op == "call_function" and first.target is operator.getitem:
            return 1 if first.args[1] == 0 else None
    return None


def _convert(model: nn.Module, fx_graph: torch.fx.Graph) -> Graph:
    modules = dict(model.named_modules())
    nodes: list[Node] = []
    index: dict[torch.fx.Node, int] = {}  # fx node -> our node (tensor values only)
    shape_nodes: set[torch.fx.Node] = set()  # x.size(...) / x.shape helpers
    output = None

    def src(a, where: str) -> int:
        if isinstance(a, torch.fx.Node) and a in index:
            return index[a]
        raise UnsupportedOpError(f"{where}: argument {a!r} is not a traced tensor (constants are not supported)")

    def add(op: Op, inputs: tuple[int, ...], name: str, fx_node: torch.fx.Node) -> None:
        nodes.append(Node(op, inputs, name))
        index[fx_node] = len(nodes) - 1

    for n in fx_graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise UnsupportedOpError("models with more than one input are not supported")
            add(Input(), (), n.name, n)
        elif n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, _IDENTITY_MODULES) or (isinstance(m, nn.Dropout) and not m.training):
                index[n] = src(n.args[0], n.target)
                continue
            factory = next((f for t, f in _MODULE_OPS.items() if type(m) is t), None)
            op = factory(m) if factory else None
            if op is None:
                raise UnsupportedOpError(
                    f"unsupported module '{n.target}' ({type(m).__name__}); supported: "
                    + ", ".join(t.__name__ for t in _MODULE_OPS)
                )
            add(op, (src(n.args[0], n.target),), n.target, n)
        elif n.op in ("call_function", "call_method"):
            t = n.target
            if n.op == "call_method" and t == "size" or (t is getattr and n.args[1] == "shape"):
                shape_nodes.add(n)
            elif t is operator.getitem and n.args[0] in shape_nodes:
                shape_nodes.add(n)
            elif t in (operator.add, torch.add, "add", operator.iadd) and len(n.args) == 2 and not n.kwargs:
                add(Add(), (src(n.args[0], str(t)), src(n.args[1], str(t))), n.name, n)
            elif n.op == "call_function" and t is F.leaky_relu:
                add(LeakyReLU(_leaky_slope(n)), (src(n.args[0], str(t)),), n.name, n)
            elif (n.op == "call_function" and t in _FUNCTION_OPS) or (n.op == "call_method" and t in _METHOD_OPS):
                cls = _FUNCTION_OPS[t] if n.op == "call_function" else _METHOD_OPS[t]
                add(cls(), (src(n.args[0], str(t)),), n.name, n)
            elif t in ("flatten", "view", "reshape", torch.flatten, torch.reshape):
                start = _flatten_args(n)
                if start is None:
                    raise UnsupportedOpError(f"{n.name}: only flattening reshapes (x.view(B, -1)) are supported")
                add(Flatten(start), (src(n.args[0], n.name),), n.name, n)
            else:
                name = getattr(t, "__name__", str(t))
                raise UnsupportedOpError(f"unsupported operation '{name}' at {n.name}")
        elif n.op == "get_attr":
            raise UnsupportedOpError(f"unsupported use of a parameter or buffer as a value: {n.target}")
        elif n.op == "output":
            if not isinstance(n.args[0], torch.fx.Node):
                raise UnsupportedOpError("models must return a single tensor")
            output = src(n.args[0], "output")
    assert output is not None
    return Graph(nodes, output)
