import json

import pytest
import torch

from certkit.io import CheckpointError, ResultsWriter, load_model, read_metadata, save_model
from certkit.models import build

ARCH = {"name": "small-conv", "in_shape": [1, 8, 8], "num_classes": 10, "mean": [0.3], "std": [0.4], "kwargs": {}}


def test_roundtrip(tmp_path):
    m = build("small-conv", (1, 8, 8), 10, [0.3], [0.4])
    p = save_model(tmp_path / "m.safetensors", m, ARCH, config={"eps": 0.1})
    m2, meta = load_model(p)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(m(x), m2(x))
    assert meta["config"]["eps"] == 0.1 and "certkit_version" in meta
    assert read_metadata(p)["arch"]["name"] == "small-conv"


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 50)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(bad)
    m = build("small-conv", (1, 8, 8), 10)
    p = save_model(tmp_path / "m.safetensors", m, ARCH)
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.safetensors")
    wrong = save_model(tmp_path / "w.safetensors", m, {**ARCH, "name": "mlp"})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(wrong)


def test_results_writer_resumes_without_duplicates(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path, header={"run": 1})
    w.write([{"idx": 0, "v": 1}, {"idx": 1, "v": 2}])
    with open(path, "a") as f:
        f.write('{"idx": 2, "v"')  # killed in mid-write
    w.close()  # a killed process releases its lock
    w2 = ResultsWriter(path, header={"run": 1})
    assert w2.done == {0, 1}
    w2.write([{"idx": 1, "v": 2}, {"idx": 2, "v": 3}])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r.get("idx") for r in lines] == [None, 0, 1, 2]
    assert [r["idx"] for r in w2.results] == [0, 1, 2]


def test_results_of_another_run_are_not_mixed(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsWriter(path, header={"method": "ibp"}).write([{"idx": 0}])
    with pytest.raises(ValueError, match="different run"):
        ResultsWriter(path, header={"method": "crown"})


def test_a_second_writer_of_the_same_results_is_refused(tmp_path):
    from certkit.io import InUseError

    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, header={"run": 1}) as w:
        w.write([{"idx": 0}])
        with pytest.raises(InUseError, match="in use by another run"):
            ResultsWriter(path, header={"run": 1})
        w.write([{"idx": 1}])
    w2 = ResultsWriter(path, header={"run": 1})  # free again once the first is closed
    assert w2.done == {0, 1} and len(path.read_text().splitlines()) == 3


def test_config_overrides():
    from certkit.io import apply_overrides

    raw = {"name": "a", "train": {"lr": 0.1}}
    apply_overrides(raw, ["train.lr=1e-3", "colt.stage_epochs=[0, 0, 2]", "model.init=runs/x/stage1.safetensors",
                          "name=b", "train.quiet = true"])
    assert raw == {"name": "b", "train": {"lr": 1e-3, "quiet": True}, "colt": {"stage_epochs": [0, 0, 2]},
                   "model": {"init": "runs/x/stage1.safetensors"}}
    for bad in ("train.lr", "=3", "train..lr=1", "name.x=1"):
        with pytest.raises(ValueError, match="--set"):
            apply_overrides(raw, [bad])
