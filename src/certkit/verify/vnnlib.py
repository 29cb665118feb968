"""VNN-LIB properties (the VNN-COMP format) as certkit input boxes and output clauses.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` and asserts the *unsafe* set: "sat" means a point
satisfying every assertion exists (a counterexample), "unsat" that the property holds. The assertions are
brought to disjunctive normal form; each disjunct is an input box and a conjunction of linear output atoms.
Atoms ``a <= b`` / ``a >= b`` become safe rows ``r·Y + d > 0`` (their negation), so that a disjunct is refuted
when one of its rows is proved positive — the clause convention of :func:`certkit.verify.verify_property`.
A strict atom (``a < b``) is proved the same way (a row proved positive refutes it too) and is kept strict where
a counterexample is checked (:func:`violates`): a point with ``a = b`` does not violate ``a < b``.
"""

from __future__ import annotations

import gzip
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from certkit.errors import CertkitError


class VnnlibError(CertkitError, ValueError):
    """A VNN-LIB file certkit cannot read."""


@dataclass
class VnnProperty:
    """One input box and the output clauses to refute on it: the property holds on the box iff every clause
    has a row with ``C·Y + d > 0`` everywhere. C: (K, n_out), d: (K,), clauses: (K,) clause index per row;
    ``strict``: (K,) the row's violation is ``C·Y + d < 0`` (else ``<= 0``); ``open_lower``/``open_upper``: (n_in,)
    the input bound is strict (``X_i > l``). The verifier proves on the closed box; a counterexample must respect
    them."""

    lower: np.ndarray
    upper: np.ndarray
    C: np.ndarray
    d: np.ndarray
    clauses: np.ndarray
    strict: np.ndarray | None = None
    open_lower: np.ndarray | None = None
    open_upper: np.ndarray | None = None

    def __post_init__(self):
        self.strict = np.zeros(len(self.d), bool) if self.strict is None else np.asarray(self.strict, bool)
        for name in ("open_lower", "open_upper"):
            v = getattr(self, name)
            setattr(self, name, np.zeros(len(self.lower), bool) if v is None else np.asarray(v, bool))


def violates(p: VnnProperty, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``(x, y)`` (flat float64 arrays) lies in the unsafe set of ``p``: ``x`` in the box (strict bounds
    strict) and, for one clause, every row violated (``C·y + d < 0`` for a strict row, ``<= 0`` else)."""
    x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    if (x < p.lower).any() or (x > p.upper).any():
        return False
    if ((x == p.lower) & p.open_lower).any() or ((x == p.upper) & p.open_upper).any():
        return False
    rows = p.C @ y + p.d
    bad = np.where(p.strict, rows < 0, rows <= 0)
    return any(bad[p.clauses == q].all() for q in np.unique(p.clauses))


def _tokens(text: str) -> list:
    text = re.sub(r";[^\n]*", "", text)
    toks = re.findall(r"\(|\)|[^\s()]+", text)
    stack: list[list] = [[]]
    for tok in toks:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise VnnlibError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibError("unbalanced '('")
    return stack[0]


def _linear(expr, n_x: int, n_y: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A linear expression as (coefficients on X, on Y, constant)."""
    cx, cy = np.zeros(n_x), np.zeros(n_y)
    if isinstance(expr, str):
        m = re.fullmatch(r"([XY])_(\d+)", expr)
        if m:
            (cx if m.group(1) == "X" else cy)[int(m.group(2))] = 1.0
            return cx, cy, 0.0
        try:
            return cx, cy, float(expr)
        except ValueError as e:
            raise VnnlibError(f"unknown term {expr!r}") from e
    op, args = expr[0], [_linear(a, n_x, n_y) for a in expr[1:]]
    if op == "+":
        return sum(a[0] for a in args), sum(a[1] for a in args), sum(a[2] for a in args)
    if op == "-":
        if len(args) == 1:
            return -args[0][0], -args[0][1], -args[0][2]
        first, rest = args[0], args[1:]
        return (first[0] - sum(a[0] for a in rest), first[1] - sum(a[1] for a in rest),
                first[2] - sum(a[2] for a in rest))
    if op == "*":
        consts = [a for a in args if not a[0].any() and not a[1].any()]
        if len(consts) < len(args) - 1:
            raise VnnlibError(f"nonlinear product {expr}")
        k = float(np.prod([a[2] for a in consts]))
        var = [a for a in args if a[0].any() or a[1].any()] or [(cx, cy, 1.0)]
        return k * var[0][0], k * var[0][1], k * var[0][2]
    raise VnnlibError(f"unsupported operator {op!r}")


def _dnf(expr) -> list[list]:
    """Disjunctive normal form of an assertion: a list of conjunctions (lists of atoms)."""
    if isinstance(expr, list) and expr and expr[0] == "and":
        parts = [_dnf(e) for e in expr[1:]]
        return [sum(combo, []) for combo in itertools.product(*parts)]
    if isinstance(expr, list) and expr and expr[0] == "or":
        return [conj for e in expr[1:] for conj in _dnf(e)]
    if isinstance(expr, list) and expr and expr[0] in ("<=", ">=", "<", ">"):
        return [[expr]]
    raise VnnlibError(f"unsupported assertion {expr}")


def read_vnnlib(path: str | Path) -> list[VnnProperty]:
    """Parse a ``.vnnlib`` (or ``.vnnlib.gz``) file into one :class:`VnnProperty` per distinct input box.

    VNN-LIB 1.0 (``declare-const X_i``/``Y_j``) is read here; VNN-LIB 2.0 (a file opening with
    ``(vnnlib-version <2.0>)``, tensors declared in ``declare-network``) through the ``vnnlib`` package, the parser
    the competition's scorer pins. Strict comparisons are read as non-strict: the unsafe set is closed, so an
    "unsat" covers it too."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no VNN-LIB file at {path}")
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    if re.match(r"\s*(;[^\n]*\s*)*\(\s*vnnlib-version", text):
        return _read_v2(text, path)
    forms = _tokens(text)
    n_x = n_y = 0
    asserts = []
    for f in forms:
        if not isinstance(f, list) or not f:
            raise VnnlibError(f"unexpected top-level form {f!r}")
        if f[0] == "declare-const":
            m = re.fullmatch(r"([XY])_(\d+)", f[1])
            if not m:
                raise VnnlibError(f"unexpected variable name {f[1]!r} (expected X_i or Y_j)")
            if m.group(1) == "X":
                n_x = max(n_x, int(m.group(2)) + 1)
            else:
                n_y = max(n_y, int(m.group(2)) + 1)
        elif f[0] == "assert":
            asserts.append(f[1])
        else:
            raise VnnlibError(f"unsupported command {f[0]!r}")
    if n_x == 0 or n_y == 0:
        raise VnnlibError(f"{path}: no X_i or no Y_j declared")

    def atom(form):  # (rel, lhs, rhs) as the violation atom sx·X + sy·Y + sc <= 0 (< 0 when strict)
        rel, lhs, rhs = form[:3]
        ax, ay, ac = _linear(lhs, n_x, n_y)
        bx, by, bc = _linear(rhs, n_x, n_y)
        strict = rel in ("<", ">")
        return (ax - bx, ay - by, ac - bc, strict) if rel in ("<=", "<") else (bx - ax, by - ay, bc - ac, strict)

    return _properties([[[atom(f) for f in conj] for conj in _dnf(a)] for a in asserts], n_x, n_y, path)


def _read_v2(text: str, path: Path) -> list[VnnProperty]:
    """VNN-LIB 2.0 through the ``vnnlib`` package: one network with one input and one output tensor (indices
    flattened in row-major order, as the ONNX tensor's), linear comparisons of them."""
    from certkit.errors import require

    vnnlib = require("vnnlib", "vnnlib", "reading VNN-LIB 2.0 files")
    try:
        query = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as e:
        raise VnnlibError(f"{path}: {e}") from e
    if len(query.networks) != 1:
        raise VnnlibError(f"{path}: declares {len(query.networks)} networks; certkit verifies one at a time")
    net = query.networks[0]
    if len(net.inputs) != 1 or len(net.outputs) != 1 or len(net.hidden):
        raise VnnlibError(f"{path}: network {net.name} declares {len(net.inputs)} inputs, {len(net.outputs)} "
                          f"outputs and {len(net.hidden)} hidden tensors; certkit reads one input and one output")
    x_decl, y_decl = net.inputs[0], net.outputs[0]
    shapes = {x_decl.name: tuple(x_decl.shape), y_decl.name: tuple(y_decl.shape)}
    n_x, n_y = int(np.prod(shapes[x_decl.name])), int(np.prod(shapes[y_decl.name]))

    def linear(expr) -> tuple[np.ndarray, np.ndarray, float]:
        try:
            lin = expr.to_linear_expr()
        except vnnlib.VNNLibException as e:
            raise VnnlibError(f"{path}: {expr} is not linear ({e})") from e
        cx, cy = np.zeros(n_x), np.zeros(n_y)
        for t in lin.terms:
            var = t.var
            flat = int(np.ravel_multi_index(tuple(var.indices), shapes[var.name])) if shapes[var.name] else 0
            (cx if var.name == x_decl.name else cy)[flat] += t.coeff
        return cx, cy, float(lin.constant)

    def atoms(c) -> list[tuple]:
        kind = type(c).__name__
        if kind == "NotEqual":
            raise VnnlibError(f"{path}: {c}: '!=' is not supported")
        ax, ay, ac = linear(c.lhs)
        bx, by, bc = linear(c.rhs)
        strict = kind in ("LessThan", "GreaterThan")
        le, ge = (ax - bx, ay - by, ac - bc, strict), (bx - ax, by - ay, bc - ac, strict)
        return {"LessEqual": [le], "LessThan": [le], "GreaterEqual": [ge], "GreaterThan": [ge],
                "Equal": [le, ge]}[kind]

    asserts = [[sum((atoms(c) for c in conj), []) for conj in a.expr.to_dnf()] for a in query.assertions]
    return _properties(asserts, n_x, n_y, path)


def _properties(asserts: list[list[list[tuple]]], n_x: int, n_y: int, path: Path) -> list[VnnProperty]:
    """The conjunction of the assertions (each in DNF: a list of conjunctions of violation atoms
    ``(sx, sy, sc, strict)``: ``sx·X + sy·Y + sc <= 0``, ``< 0`` when strict) as one property per distinct input
    box (a box with other strict bounds is another box)."""
    terms: list[list[tuple]] = [[]]
    for a in asserts:  # the conjunction of all assertions, in DNF
        terms = [t + c for t in terms for c in a]
    groups: dict[tuple, list] = {}
    for term in terms:
        lo, up = np.full(n_x, -np.inf), np.full(n_x, np.inf)
        open_lo, open_up = np.zeros(n_x, bool), np.zeros(n_x, bool)
        rows = []
        for sx, sy, sc, strict in term:
            if sy.any():
                if sx.any():
                    raise VnnlibError("atoms mixing inputs and outputs are not supported")
                rows.append((sy, sc, strict))  # safe row: sy·Y + sc > 0
            else:
                nz = np.nonzero(sx)[0]
                if len(nz) != 1:
                    raise VnnlibError("input constraints must bound one input at a time")
                i, k = nz[0], sx[nz[0]]
                b, (val, opened) = -sc / k, (up, open_up) if k > 0 else (lo, open_lo)
                if b == val[i]:
                    opened[i] |= strict
                elif (b < val[i]) == (k > 0):  # the tighter bound wins, with its strictness
                    val[i], opened[i] = b, strict
        if (lo > up).any() or ((lo == up) & (open_lo | open_up)).any():
            continue  # an empty box: this disjunct cannot be violated
        if not np.isfinite(lo).all() or not np.isfinite(up).all():
            raise VnnlibError(f"{path}: every input needs a lower and an upper bound")
        key = (lo.tobytes(), up.tobytes(), open_lo.tobytes(), open_up.tobytes())
        groups.setdefault(key, [lo, up, open_lo, open_up, []])[4].append(rows)
    props = []
    for lo, up, open_lo, open_up, conjs in groups.values():
        C, d, cl, st = [], [], [], []
        for q, rows in enumerate(conjs):
            if not rows:  # no output condition: every point of the box is a counterexample
                rows = [(np.zeros(n_y), -1.0, False)]
            for r, c, strict in rows:
                C.append(r)
                d.append(c)
                cl.append(q)
                st.append(strict)
        props.append(VnnProperty(lo, up, np.array(C), np.array(d), np.array(cl), np.array(st), open_lo, open_up))
    return props


def verify_vnnlib(model, props: list[VnnProperty], input_shape: tuple[int, ...], timeout: float = 120.0,
                  log=None, **options) -> tuple[str, object | None]:
    """Decide a VNN-LIB property on ``model`` (inputs reshaped to ``input_shape``, batch dimension included)
    with the verification cascade. Returns the VNN-COMP answer — 'unsat' (holds), 'sat' (with the
    counterexample input: a float64 point of the file's box, checked in float64), 'timeout' or 'unknown' — and
    the counterexample or None. ``log`` (e.g. ``print``) gets a line per input box: its verdict, the stage that
    decided it and each stage's seconds."""
    import time

    import torch

    from certkit.specs import Box, LinearSpec, Property
    from certkit.verify import verify_property

    n_in = int(np.prod(input_shape[1:]))
    ref = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), torch.zeros(1))
    dtype, device = ref.dtype, ref.device  # the model's: a float64 network is verified in float64
    with torch.no_grad():
        n_out = model(torch.zeros(1, *input_shape[1:], dtype=dtype, device=device)).numel()
    for p in props:
        if p.lower.size != n_in:
            raise VnnlibError(f"the property declares {p.lower.size} inputs X_i, the network takes {n_in} "
                              f"(input shape {tuple(input_shape[1:])})")
        if p.C.shape[1] != n_out:
            raise VnnlibError(f"the property declares {p.C.shape[1]} outputs Y_j, the network has {n_out}")
    t0 = time.perf_counter()
    deadline = t0 + timeout
    boxes = []
    for p in props:
        # the file's bounds, exactly (float64), and the box in the model's dtype rounded outwards, so that it
        # contains the file's box (rounded to nearest it can cut a sliver off, and "unsat" would not cover it)
        lo64 = torch.tensor(p.lower, dtype=torch.float64, device=device).view(1, *input_shape[1:])
        up64 = torch.tensor(p.upper, dtype=torch.float64, device=device).view(1, *input_shape[1:])
        lo, up = _round_out(lo64, up64, dtype)
        # the rows C·y + d with d rounded down: a row proved positive is positive for the file's d too; a C that
        # the model's dtype cannot hold exactly (VNN-LIB's are almost always ±1) is verified in float64
        C64 = torch.tensor(p.C, dtype=torch.float64, device=device)
        dt = dtype if torch.equal(C64.to(dtype).double(), C64) else torch.float64
        d_lo = _round_out(torch.tensor(p.d, dtype=torch.float64, device=device), None, dt)[0]
        if dt == torch.float64:
            lo, up = lo64, up64
        boxes.append((p, lo64, up64, lo, up, C64, dt, d_lo))
    # boxes with the same rows and clauses are one batch: the attack and the bounds run on all of them at once
    groups: list[list[int]] = []
    for i, (p, *_, C64, dt, _d) in enumerate(boxes):
        last = boxes[groups[-1][0]] if groups else None
        if (last is not None and last[6] == dt and last[5].shape == C64.shape
                and np.array_equal(last[0].clauses, p.clauses)):
            groups[-1].append(i)
        else:
            groups.append([i])
    answer = "unsat"
    nets = {dtype: model}
    for group in groups:
        left = deadline - time.perf_counter()
        if left <= 0:
            return "timeout", None
        dt = boxes[group[0]][6]
        if dt not in nets:
            nets[dt] = _double(model)
        box = Box(torch.cat([boxes[i][3] for i in group]), torch.cat([boxes[i][4] for i in group]))
        prop = Property(LinearSpec(torch.stack([boxes[i][5].to(dt) for i in group]),
                                   torch.stack([boxes[i][7] for i in group])), torch.tensor(props[group[0]].clauses))
        verdicts = verify_property(nets[dt], box, prop, timeout=left, deadline=deadline, first_counterexample=True,
                                   **options)
        for i, v in zip(group, verdicts):
            p, lo64, up64, *_, C64, _dt, _d = boxes[i]
            if log is not None:
                times = ", ".join(f"{k} {t:.1f} s" for k, t in v.seconds.items())
                log(f"box {i + 1}/{len(props)}: {v.verdict}" + (f" by {v.stage}" if v.stage else "")
                    + (f" ({times})" if times else ""))
            if v.verdict == "falsified":
                # a counterexample of the rounded-out box, moved into the file's box and checked there in float64
                if torch.float64 not in nets:
                    nets[torch.float64] = _double(model)
                x = torch.minimum(torch.maximum(v.counterexample.double().view_as(lo64), lo64), up64)
                with torch.no_grad():
                    y = nets[torch.float64](x).reshape(-1)
                if violates(p, x.reshape(-1).cpu().numpy(), y.cpu().numpy()):
                    return "sat", x
                v.verdict = "unknown"
            if v.verdict == "unknown":
                answer = "timeout" if time.perf_counter() - t0 >= timeout * 0.99 else "unknown"
    return answer, None


def _round_out(lo64, up64, dtype):
    """[lo64, up64] rounded outwards to ``dtype`` (``up64`` may be None)."""
    import torch

    lo = lo64.to(dtype)
    inf = torch.tensor(float("inf"), dtype=dtype, device=lo.device)
    lo = torch.where(lo.double() > lo64, torch.nextafter(lo, -inf), lo)
    if up64 is None:
        return lo, None
    up = up64.to(dtype)
    up = torch.where(up.double() < up64, torch.nextafter(up, inf), up)
    return lo, up


def _double(model):
    from certkit.nn import float64_copy

    return float64_copy(model)


def format_result(answer: str, model=None, x=None) -> str:
    """The VNN-COMP result file: the answer, and for 'sat' the assignment of every X_i and Y_j."""
    if answer != "sat" or x is None:
        return answer + "\n"
    import copy

    import torch

    with torch.no_grad():
        y = copy.deepcopy(model).double()(x.double()).reshape(-1)
    xs = x.reshape(-1).double().tolist()
    lines = [f"(X_{i} {v!r})" for i, v in enumerate(xs)] + [f"(Y_{j} {v!r})" for j, v in enumerate(y.tolist())]
    return "sat\n(" + "\n ".join(lines) + ")\n"


def check_counterexample(onnx_path: str | Path, props: list[VnnProperty], x, y) -> str | None:
    """Check a counterexample the way the competition's scorer does: the ONNX file itself, run by onnxruntime
    (or, where it is not installed, by onnx's reference evaluator), must give outputs within 1e-4 (relative and
    absolute) of ``y``, and ``(x, y)`` must lie in one of the properties' unsafe sets. Returns None when it
    passes, else the reason."""
    from certkit.errors import require

    onnx = require("onnx", "onnx", "checking counterexamples on the ONNX file")

    path = Path(onnx_path)
    data = path.read_bytes()
    model = onnx.load_from_string(gzip.decompress(data) if path.suffix == ".gz" else data)
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    feed = {inp.name: xs.astype(np_dtype).reshape(shape)}
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, feed)[0]
        engine = "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        out = ReferenceEvaluator(model).run(None, feed)[0]
        engine = "onnx.reference"
    out = np.asarray(out, dtype=np.float64).reshape(-1)
    if out.shape != ys.shape or not np.allclose(out, ys, rtol=1e-4, atol=1e-4):
        return f"{engine} gives outputs {out[:6].tolist()}, the counterexample claims {ys[:6].tolist()}"
    if any(violates(p, xs, ys) for p in props):
        return None
    return "the point and its outputs are in no unsafe set of the property"
