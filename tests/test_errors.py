"""Bad input gets a certkit error that names the file, key or argument (issue 22, defects 4 and 5)."""

import gzip

import numpy as np
import pytest
import torch
from torch import nn

from certkit.errors import CertkitError, ConfigError, OnnxError
from certkit.io import CheckpointError, load_model, save_model
from certkit.specs import LinearSpec, LinfBall, SpecError, margin_spec
from certkit.verify.vnnlib import VnnlibError, read_vnnlib, verify_vnnlib


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _onnx_graph(path, node, weight_shape):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])
    W = numpy_helper.from_array(np.ones(weight_shape, np.float32), "W")
    onnx.save(helper.make_model(helper.make_graph([node], "g", [X], [Y], [W])), path)


def test_every_input_error_is_a_certkit_error():
    for err in (SpecError, ConfigError, OnnxError, CheckpointError, VnnlibError):
        assert issubclass(err, CertkitError)
    assert issubclass(SpecError, ValueError) and issubclass(CheckpointError, RuntimeError)


def test_onnx_file_errors_name_the_file(tmp_path):
    from onnx import helper

    from certkit.onnx_io import load_onnx

    _onnx_graph(tmp_path / "ok.onnx", helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1), (2, 3))
    raw = (tmp_path / "ok.onnx").read_bytes()
    assert load_onnx(tmp_path / "ok.onnx")(torch.zeros(1, 3)).shape == (1, 2)
    (tmp_path / "cut.onnx.gz").write_bytes(gzip.compress(raw)[:40])
    (tmp_path / "plain.onnx.gz").write_bytes(raw)
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name, match in (("cut.onnx.gz", "not a complete gzip"), ("plain.onnx.gz", "not a complete gzip"),
                        ("empty.onnx", "no ONNX graph")):
        with pytest.raises(OnnxError, match=match) as e:
            load_onnx(tmp_path / name)
        assert name in str(e.value)
    _onnx_graph(tmp_path / "gemm.onnx", helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1), (2, 5))
    _onnx_graph(tmp_path / "mm.onnx", helper.make_node("MatMul", ["X", "W"], ["Y"]), (5, 2))
    for name, op in (("gemm.onnx", "Gemm"), ("mm.onnx", "MatMul")):
        with pytest.raises(OnnxError, match=rf"{name}: ONNX node Y \({op}\): .*do not fit its input of shape \(1, 3\)"):
            load_onnx(tmp_path / name)


def _vnnlib(path, n_x, n_y, out_atom):
    lines = [f"(declare-const X_{i} Real)" for i in range(n_x)] + [f"(declare-const Y_{j} Real)" for j in range(n_y)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 1.0))" for i in range(n_x)] + [f"(assert {out_atom})"]
    path.write_text("\n".join(lines))
    return read_vnnlib(path)


def test_vnnlib_that_does_not_fit_the_network(tmp_path):
    net = _mlp()
    with pytest.raises(VnnlibError, match="declares 5 inputs X_i, the network takes 3"):
        verify_vnnlib(net, _vnnlib(tmp_path / "a.vnnlib", 5, 2, "(>= Y_0 Y_1)"), (1, 3))
    with pytest.raises(VnnlibError, match="declares 4 outputs Y_j, the network has 2"):
        verify_vnnlib(net, _vnnlib(tmp_path / "b.vnnlib", 3, 4, "(>= Y_3 Y_1)"), (1, 3))


def test_spec_errors():
    from certkit.bounds.linear import crown_bounds
    from certkit.bounds.zonotope import zonotope_bounds
    from certkit.verify import certify

    net, s = _mlp(), LinfBall(torch.rand(2, 3), 0.1)
    wrong_batch = margin_spec(torch.tensor([0, 1, 1]), 2)
    for f in (crown_bounds, zonotope_bounds):
        with pytest.raises(SpecError, match="does not fit outputs"):
            f(net, s, wrong_batch)
    with pytest.raises(SpecError, match="integer tensor"):
        certify(net, torch.rand(2, 3), torch.tensor([0.0, 1.0]), 0.1)
    with pytest.raises(SpecError, match="integer tensor"):
        margin_spec(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(SpecError, match="spec matrix C contains NaN"):
        LinearSpec(torch.tensor([[[1.0, float("nan")]]]))
    with pytest.raises(SpecError, match="spec offset d contains NaN"):
        LinearSpec(torch.ones(1, 1, 2), torch.tensor([[float("nan")]]))


def test_config_values_of_the_wrong_type_name_the_key():
    from certkit.bayes.run import read_config
    from certkit.generative.train import VAEConfig
    from certkit.train.loop import TrainConfig

    with pytest.raises(ConfigError, match="'train.epochs' must be int, got 'ten'"):
        TrainConfig.from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="'eval.eps' must be float"):
        TrainConfig.from_dict({"eval": {"eps": "0.1"}})
    with pytest.raises(ConfigError, match="'colt.stage_epochs' must be list"):
        TrainConfig.from_dict({"train": {"objective": "colt"}, "colt": {"stage_epochs": [1, "2"]}})
    with pytest.raises(ConfigError, match="'train.eps' must be float"):
        VAEConfig.from_dict({"train": {"eps": "x"}})
    with pytest.raises(ConfigError, match="'bayes.epochs' must be int"):
        read_config({"bayes": {"epochs": 2.5}})
    cfg = TrainConfig.from_dict({"train": {"lr": 1, "grad_clip": None, "eps": 0.3}, "colt": {"layers": [1, 2]}})
    assert cfg.lr == 1 and cfg.colt.layers == [1, 2]  # an int where a float goes is fine
    with pytest.raises(ConfigError, match="unknown config key.*smoothing.sigmaa"):
        TrainConfig.from_dict({"smoothing": {"sigmaa": 0.5}})
    with pytest.raises(ConfigError, match="unknown smoothing.noise 'cauchy'"):
        TrainConfig.from_dict({"smoothing": {"noise": "cauchy"}})
    with pytest.raises(ConfigError, match="smoothing.sigma must be positive"):
        TrainConfig.from_dict({"smoothing": {"sigma": 0}})
    with pytest.raises(ConfigError, match="'colt' must be a table"):
        TrainConfig.from_dict({"colt": 3})


@pytest.mark.parametrize("mean,std", [([0.1], [0.0]), (["a"], [1.0]), ([0.1], [float("inf")])])
def test_checkpoint_with_bad_normalisation_names_the_file(tmp_path, mean, std):
    path = tmp_path / "bad.safetensors"
    save_model(path, nn.Sequential(nn.Flatten(), nn.Linear(4, 2)),
               {"name": "mlp", "in_shape": [1, 2, 2], "num_classes": 2, "mean": mean, "std": std, "kwargs": {}})
    with pytest.raises(CheckpointError, match="bad.safetensors: cannot rebuild"):
        load_model(path)


def test_vae_rejects_shapes_it_cannot_reconstruct():
    from certkit.generative.vae import VAE

    with pytest.raises(SpecError, match="multiples of 4"):
        VAE((1, 6, 6))
    assert VAE((1, 8, 8), latent=2, hidden=8)(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_the_bayes_config_is_read_like_the_others():
    from certkit.bayes.run import read_config

    with pytest.raises(ConfigError, match="unknown key .data.datset."):
        read_config({"data": {"datset": "mnist"}})  # was silently ignored
    with pytest.raises(ConfigError, match="'model.kwargs' must be dict"):
        read_config({"model": {"kwargs": 3}})
    cfg = read_config({"name": "b", "data": {"dataset": "fashion-mnist"}, "bayes": {"method": "swag", "eps": 0}})
    assert (cfg["name"], cfg["data"], cfg["method"], cfg["eps"], cfg["lam"]) == ("b", "fashion-mnist", "swag", 0, 0.25)


def test_a_missing_or_corrupt_bayes_run_is_named(tmp_path, capsys):
    from certkit.cli import main

    assert main(["bayes", "eval", "--run", str(tmp_path / "nope")]) == 2
    assert "not a finished Bayes run" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{bad")
    (tmp_path / "run" / "posterior.safetensors").write_bytes(b"")
    assert main(["bayes", "eval", "--run", str(tmp_path / "run")]) == 2
    assert "corrupt" in capsys.readouterr().err
