"""ONNX loading and VNN-LIB parsing: exact outputs, clear errors, and real VNN-COMP instances."""

import copy
import gzip
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from certkit.graph import UnsupportedOpError, to_graph
from certkit.models import load_colt_mnist
from certkit.onnx_io import load_onnx
from certkit.verify.vnnlib import VnnlibError, format_result, read_vnnlib, verify_vnnlib


def export(model: nn.Module, shape, path):
    import onnx

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.rand(*shape), f, dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    onnx.save_model(onnx.load_from_string(f.getvalue()), str(path))


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.skip = nn.Conv2d(2, 3, 1)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(48, 10), nn.ReLU(), nn.Linear(10, 4))
        self.register_buffer("mean", torch.tensor([0.3, 0.6]).view(1, 2, 1, 1))

    def forward(self, x):
        x = (x - self.mean) / 0.5
        return self.head(self.body(x) + self.skip(x))


def test_exported_network_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Normed().eval()
    model.body[1].running_mean.uniform_(-1, 1)
    export(model, (1, 2, 8, 8), tmp_path / "net.onnx")
    ours = load_onnx(tmp_path / "net.onnx")
    x = torch.rand(5, 2, 8, 8)
    torch.testing.assert_close(ours(x), model(x), rtol=1e-5, atol=1e-5)
    kinds = {type(n.op).__name__ for n in to_graph(ours).nodes}
    assert {"ElementwiseAffine", "Conv2d", "Add", "AvgPool2d", "Linear"} <= kinds


def test_released_colt_onnx_equals_the_state_dict(shared):
    onnx_net = load_onnx(shared / "models/colt/mnist_0.1.onnx")
    ref = load_colt_mnist(shared / "models/colt/mnist_0.1_convmed_flat_2_2_100.pt")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(onnx_net((x - 0.1307) / 0.3081), ref(x), rtol=1e-5, atol=1e-5)


def test_mnist_fc_network_matches_its_weights(shared):
    import onnx
    from onnx import numpy_helper

    path = shared / "vnncomp/2022/mnist_fc/onnx/mnist-net_256x2.onnx.gz"
    net = load_onnx(path)
    assert net.input_shape == (1, 784, 1)
    proto = onnx.load_from_string(gzip.decompress(path.read_bytes()))
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    x = np.random.default_rng(0).random((3, 784))
    h = np.maximum(x @ w["layers.0.weight"].T + w["layers.0.bias"], 0)
    h = np.maximum(h @ w["layers.2.weight"].T + w["layers.2.bias"], 0)
    ref = h @ w["layers.4.weight"].T + w["layers.4.bias"]
    out = net(torch.tensor(x, dtype=torch.float32).view(3, 784, 1))
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-4)


def _graph(nodes, inits, in_shape, out_name):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g)


def test_matmul_add_sub_div_and_unsupported_ops(tmp_path):
    import onnx
    from onnx import helper

    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    nodes = [helper.make_node("Sub", ["x", "m"], ["a"]), helper.make_node("Div", ["a", "s"], ["c"]),
             helper.make_node("MatMul", ["c", "W"], ["d"]), helper.make_node("Add", ["d", "b"], ["y"])]
    onnx.save_model(_graph(nodes, {"m": 0.5, "s": 2.0, "W": W, "b": b}, [1, 6], "y"), str(tmp_path / "a.onnx"))
    net = load_onnx(tmp_path / "a.onnx")
    x = torch.rand(4, 6)
    ref = ((x.double() - 0.5) / 2) @ torch.tensor(W) + torch.tensor(b)
    torch.testing.assert_close(net(x).double(), ref, rtol=1e-5, atol=1e-5)
    bad = _graph([helper.make_node("Softmax", ["x"], ["y"])], {}, [1, 6], "y")
    onnx.save_model(bad, str(tmp_path / "b.onnx"))
    with pytest.raises(UnsupportedOpError, match="Softmax"):
        load_onnx(tmp_path / "b.onnx")
    (tmp_path / "c.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="not a readable ONNX"):
        load_onnx(tmp_path / "c.onnx")
    with pytest.raises(FileNotFoundError):
        load_onnx(tmp_path / "missing.onnx")


def test_vnnlib_mnist_fc_property(shared):
    props = read_vnnlib(shared / "vnncomp/2022/mnist_fc/vnnlib/prop_0_0.03.vnnlib.gz")
    assert len(props) == 1
    p = props[0]
    assert p.lower.shape == (784,) and (p.upper - p.lower).max() <= 0.06 + 1e-6 and (p.lower >= 0).all()
    assert p.C.shape == (9, 10) and list(p.clauses) == list(range(9))
    assert (p.C[:, 4] == 1).all() and (p.C.sum(1) == 0).all()  # safe rows Y_4 − Y_j > 0 (label 4)


def test_vnnlib_dnf_multiple_boxes_and_errors(tmp_path):
    text = """; two input boxes, one disjunct with two atoms
    (declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
    (assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
                (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1))))
    (assert (or (and (<= Y_0 Y_1) (>= Y_0 0.5)) (and (<= (+ Y_0 (* 2 Y_1)) -1))))
    """
    (tmp_path / "p.vnnlib").write_text(text)
    props = read_vnnlib(tmp_path / "p.vnnlib")
    assert len(props) == 2 and [list(p.lower) for p in props] == [[0, 0], [2, 0]]
    p = props[0]
    assert list(p.clauses) == [0, 0, 1]
    np.testing.assert_allclose(p.C, [[1, -1], [-1, 0], [1, 2]])  # safe rows: negations of the atoms
    np.testing.assert_allclose(p.d, [0, 0.5, 1])
    assert not p.strict.any() and not p.open_lower.any() and not p.open_upper.any()
    (tmp_path / "q.vnnlib").write_text("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (* X_0 Y_0) 1))")
    with pytest.raises(VnnlibError, match="nonlinear|mixing"):
        read_vnnlib(tmp_path / "q.vnnlib")
    (tmp_path / "r.vnnlib").write_text("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))")
    with pytest.raises(VnnlibError, match="lower and an upper"):
        read_vnnlib(tmp_path / "r.vnnlib")


def _to_v2(text: str, x_shape: list[int], y_shape: list[int]) -> str:
    """A VNN-LIB 1.0 property rewritten in 2.0 syntax (X_i -> X[...], Y_j -> Y[...], numbers as reals)."""
    import re

    def idx(name, shape):
        i = int(name.split("_")[1])
        return ",".join(str(k) for k in np.unravel_index(i, shape))

    body = re.sub(r"\(declare-const [XY]_\d+ Real\)", "", re.sub(r";[^\n]*", "", text))
    body = re.sub(r"(?<![\w.])(-?\d+)(?![\w.])", r"\1.0", body)  # integer literals are not reals in 2.0
    body = re.sub(r"\bX_(\d+)\b", lambda m: f"X[{idx(m.group(0), x_shape)}]", body)
    body = re.sub(r"\bY_(\d+)\b", lambda m: f"Y[{idx(m.group(0), y_shape)}]", body)
    return (f"(vnnlib-version <2.0>)\n(declare-network N (declare-input X real [{','.join(map(str, x_shape))}]) "
            f"(declare-output Y real [{','.join(map(str, y_shape))}]))\n{body}")


def test_vnnlib_2_reads_as_its_1_0_twin(shared, tmp_path):
    pytest.importorskip("vnnlib")
    for name in ["prop_0_0.03", "prop_7_0.05"]:
        text = gzip.decompress((shared / f"vnncomp/2022/mnist_fc/vnnlib/{name}.vnnlib.gz").read_bytes()).decode()
        (tmp_path / f"{name}.vnnlib").write_text(_to_v2(text, [1, 1, 28, 28], [1, 10]))
        (p1,), (p2,) = read_vnnlib(shared / f"vnncomp/2022/mnist_fc/vnnlib/{name}.vnnlib.gz"), \
            read_vnnlib(tmp_path / f"{name}.vnnlib")
        for a in ["lower", "upper", "C", "d", "clauses"]:
            np.testing.assert_array_equal(getattr(p1, a), getattr(p2, a))
    net = load_onnx(shared / "vnncomp/2022/mnist_fc/onnx/mnist-net_256x2.onnx.gz")
    assert verify_vnnlib(net, read_vnnlib(tmp_path / "prop_0_0.03.vnnlib"), net.input_shape, timeout=30)[0] == "unsat"


def test_vnnlib_2_tensors_equalities_disjunctions_and_errors(tmp_path):
    pytest.importorskip("vnnlib")
    head = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2,2]) "
            "(declare-output Y float32 [1,3]))\n")
    text = head + """
    (assert (and (<= -1.0 X[0,0,0]) (<= X[0,0,0] 1.0) (== X[0,0,1] 0.25)))
    (assert (or (and (>= X[0,1,0] 0.0) (<= X[0,1,0] 1.0)) (and (>= X[0,1,0] 2.0) (<= X[0,1,0] 3.0))))
    (assert (and (>= X[0,1,1] -0.5) (<= (* 2.0 X[0,1,1]) 1.0)))
    (assert (or (and (<= (- Y[0,0] (* 2.0 Y[0,1])) 1.5) (> Y[0,2] 3.0)) (< Y[0,1] Y[0,2])))
    """
    (tmp_path / "p.vnnlib").write_text(text)
    props = read_vnnlib(tmp_path / "p.vnnlib")
    assert len(props) == 2
    np.testing.assert_array_equal(props[0].lower, [-1, 0.25, 0, -0.5])  # X[0,i,j] at flat index 2i + j
    np.testing.assert_array_equal(props[0].upper, [1, 0.25, 1, 0.5])
    np.testing.assert_array_equal(props[1].lower, [-1, 0.25, 2, -0.5])
    p = props[0]
    assert list(p.clauses) == [0, 0, 1]  # atom lhs <= rhs becomes the safe row lhs − rhs > 0
    np.testing.assert_allclose(p.C, [[1, -2, 0], [0, 0, -1], [0, 1, -1]])
    np.testing.assert_allclose(p.d, [-1.5, 3, 0])
    assert p.strict.tolist() == [False, True, True]  # "> Y[0,2] 3.0" and "< Y[0,1] Y[0,2]" stay strict
    bad = {"not linear": "(assert (<= (* X[0,0,0] X[0,0,1]) 1.0))",
           "not supported": "(assert (!= Y[0,0] 1.0))",
           "out of bounds": "(assert (<= X[0,5,0] 1.0))",
           "lower and an upper": "(assert (<= Y[0,0] 1.0))"}
    for msg, line in bad.items():
        (tmp_path / "b.vnnlib").write_text(head + line)
        with pytest.raises(VnnlibError, match=msg):
            read_vnnlib(tmp_path / "b.vnnlib")
    (tmp_path / "two.vnnlib").write_text("(vnnlib-version <2.0>)\n(declare-network A (declare-input X real [1]) "
                                         "(declare-output Y real [1]))(declare-network B (declare-input U real [1]) "
                                         "(declare-output V real [1]))(assert (<= X[0] 1.0))")
    with pytest.raises(VnnlibError, match="2 networks"):
        read_vnnlib(tmp_path / "two.vnnlib")


@pytest.mark.parametrize("prop, truth", [("prop_0_0.03", "unsat"), ("prop_1_0.03", "sat")])
def test_mnist_fc_instances_agree_with_ground_truth(shared, prop, truth):
    root = shared / "vnncomp/2022/mnist_fc"
    net = load_onnx(root / "onnx/mnist-net_256x2.onnx.gz")
    props = read_vnnlib(root / f"vnnlib/{prop}.vnnlib.gz")
    answer, x = verify_vnnlib(net, props, net.input_shape, timeout=60)
    assert answer == truth
    if answer == "sat":
        p = props[0]
        flat = x.reshape(-1).numpy()
        assert x.dtype == torch.float64 and (flat >= p.lower).all() and (flat <= p.upper).all()  # the file's box
        y = copy.deepcopy(net).double()(x).reshape(-1).detach().numpy()
        assert any((p.C[p.clauses == q] @ y + p.d[p.clauses == q] <= 0).all() for q in set(p.clauses))
        text = format_result(answer, net, x)
        assert text.startswith("sat\n((X_0 ") and "(Y_9 " in text
