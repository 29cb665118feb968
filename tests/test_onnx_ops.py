"""One small ONNX graph per converter, compared with onnx's reference evaluator; and every VNN-COMP network in
../shared loads and computes what the file says."""

import gzip

import numpy as np
import pytest
import torch

from certkit.graph import UnsupportedOpError, to_graph
from certkit.onnx_io import load_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

RNG = np.random.default_rng(0)


def build(nodes, in_shape, consts: dict, path, out_shape=None, dtype=TensorProto.FLOAT):
    """A one-input one-output model: ``nodes`` read 'x' and the constants and write 'y'."""
    np_dtype = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if k.startswith("shape") else np_dtype), k)
             for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(in_shape))],
                              [helper.make_tensor_value_info("y", dtype, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return model


def check(model, path, in_shape, n=3):
    """Ours (module and graph) equals the reference evaluator on random inputs, one at a time."""
    ours = load_onnx(path)
    ref = ReferenceEvaluator(model)
    graph = to_graph(ours)
    floats = [t for t in [*ours.parameters(), *ours.buffers()] if t.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.float32
    for _ in range(n):
        x = RNG.standard_normal(in_shape)
        want = ref.run(None, {"x": x.astype(np.float64 if dtype == torch.float64 else np.float32)})[0]
        xt = torch.as_tensor(x, dtype=dtype).reshape(ours.input_shape)
        with torch.no_grad():
            for got in (ours(xt), graph.forward(xt)):
                np.testing.assert_allclose(got.numpy().reshape(-1), want.reshape(-1), rtol=1e-5, atol=1e-5)
    return ours


@pytest.mark.parametrize("op, const_first", [("Sub", False), ("Sub", True), ("Div", False), ("Mul", True),
                                             ("Add", False)])
@pytest.mark.parametrize("cshape", [(5,), (1, 1, 1, 5), (1, 1, 1), (2, 1, 5)])
def test_elementwise_constants_of_any_broadcastable_shape(tmp_path, op, const_first, cshape):
    c = RNG.uniform(0.5, 2.0, cshape)
    ins = ["c", "x"] if const_first else ["x", "c"]
    if op == "Div" and const_first:
        return
    model = build([helper.make_node(op, ins, ["y"])], (1, 2, 3, 5), {"c": c}, tmp_path / "m.onnx")
    ours = check(model, tmp_path / "m.onnx", (1, 2, 3, 5))
    assert {type(n.op).__name__ for n in to_graph(ours).nodes} == {"Input", "ElementwiseAffine"}


def test_acas_style_normalisation_then_matmul(tmp_path):
    nodes = [helper.make_node("Sub", ["x", "mean"], ["a"]), helper.make_node("Div", ["a", "std"], ["b"]),
             helper.make_node("Flatten", ["b"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Neg", ["r"], ["y"])]
    consts = {"mean": RNG.standard_normal((1, 1, 1, 5)), "std": RNG.uniform(1, 3, (1, 1, 1, 5)),
              "w": RNG.standard_normal((5, 4)), "bias": RNG.standard_normal(4)}
    model = build(nodes, (1, 1, 1, 5), consts, tmp_path / "acas.onnx")
    check(model, tmp_path / "acas.onnx", (1, 1, 1, 5))


def test_nhwc_transpose_reshape_squeeze_unsqueeze(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "k"], ["c"]),
             helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.2),
             helper.make_node("Reshape", ["l", "shape1"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "shape_axes"], ["u"]),
             helper.make_node("Squeeze", ["u", "shape_axes"], ["s"]),
             helper.make_node("Transpose", ["s"], ["y"], perm=[0, 2, 1])]
    consts = {"k": RNG.standard_normal((3, 2, 2, 2)), "shape1": [1, 3, -1], "shape_axes": [2]}
    model = build(nodes, (1, 4, 4, 2), consts, tmp_path / "nhwc.onnx")
    ours = check(model, tmp_path / "nhwc.onnx", (1, 4, 4, 2))
    kinds = [type(n.op).__name__ for n in to_graph(ours).nodes]
    assert "Reindex" in kinds and "LeakyReLU" in kinds


def test_a_pad_that_pads_nothing_dropout_and_identity(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "shape_pads"], ["p"]), helper.make_node("Dropout", ["p"], ["d"]),
             helper.make_node("Identity", ["d"], ["i"]), helper.make_node("AveragePool", ["i"], ["y"],
                                                                           kernel_shape=[2, 2])]
    model = build(nodes, (1, 1, 4, 4), {"shape_pads": [0] * 8}, tmp_path / "pad.onnx")
    check(model, tmp_path / "pad.onnx", (1, 1, 4, 4))
    nodes[0] = helper.make_node("Pad", ["x", "shape_pads"], ["p"])
    model = build(nodes, (1, 1, 4, 4), {"shape_pads": [0, 0, 1, 1, 0, 0, 1, 1]}, tmp_path / "pad1.onnx")
    with pytest.raises(UnsupportedOpError, match="Pad that pads nothing"):
        load_onnx(tmp_path / "pad1.onnx")


def test_a_vector_input_without_batch_axis_and_a_float64_network(tmp_path):
    nodes = [helper.make_node("MatMul", ["w0", "x"], ["m"]), helper.make_node("Add", ["m", "b0"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["w1", "r"], ["y"])]
    consts = {"w0": RNG.standard_normal((3, 1)) * 1e3, "b0": RNG.standard_normal(3), "w1": RNG.standard_normal((1, 3))}
    model = build(nodes, (1,), consts, tmp_path / "vec.onnx", dtype=TensorProto.DOUBLE)
    ours = check(model, tmp_path / "vec.onnx", (1,))
    assert ours.input_shape == (1, 1) and next(ours.parameters()).dtype == torch.float64


def test_unsupported_constants_and_ops_name_the_node(tmp_path):
    build([helper.make_node("Div", ["c", "x"], ["y"], name="inv")], (1, 3), {"c": np.ones(3)},
                  tmp_path / "inv.onnx")
    with pytest.raises(UnsupportedOpError, match="inv.*not an affine map"):
        load_onnx(tmp_path / "inv.onnx")
    build([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0], name="tb")], (1, 3), {},
                  tmp_path / "tb.onnx")
    with pytest.raises(UnsupportedOpError, match="tb.*batch axis"):
        load_onnx(tmp_path / "tb.onnx")
    build([helper.make_node("Softmax", ["x"], ["y"], name="sm")], (1, 3), {}, tmp_path / "sm.onnx")
    with pytest.raises(UnsupportedOpError, match="sm.*Softmax"):
        load_onnx(tmp_path / "sm.onnx")


def test_every_vnncomp_network_loads_and_matches_the_reference_evaluator(shared):
    paths = sorted((shared / "vnncomp").glob("*/*/onnx/**/*.onnx.gz"))
    if not paths:
        pytest.skip("no VNN-COMP networks in ../shared")
    seen = set()
    for p in paths:
        bench = p.parts[-3]
        ours = load_onnx(p)
        to_graph(ours)
        if bench in seen or bench == "nn4sys":  # one evaluation per benchmark (nn4sys's nets are 24M+ params)
            continue
        seen.add(bench)
        model = onnx.load_from_string(gzip.decompress(p.read_bytes()))
        inits = {t.name for t in model.graph.initializer}
        inp = next(i for i in model.graph.input if i.name not in inits)
        name = inp.name
        x = RNG.random(ours.input_shape)
        elem = inp.type.tensor_type.elem_type
        x = x.astype(np.float64 if elem == TensorProto.DOUBLE else np.float32)
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        want = ReferenceEvaluator(model).run(None, {name: x.reshape(shape)})[0]
        with torch.no_grad():
            got = ours(torch.as_tensor(x))
        np.testing.assert_allclose(got.numpy().reshape(-1), want.reshape(-1), rtol=1e-4, atol=1e-4)
    assert len(seen) >= 6
