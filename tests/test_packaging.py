"""What a `pip install` user gets: shipped configs by name, the bundled digits, optional extras with clear errors."""

import sys
from pathlib import Path

import pytest
import torch

from certkit.cli import main
from certkit.errors import MissingDependencyError, require
from certkit.io import CONFIGS, config_path, load_config, tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_by_name_and_typos_get_suggestions(capsys):
    assert config_path("mnist-ibp-0.1") == CONFIGS / "mnist-ibp-0.1.toml" == config_path("mnist-ibp-0.1.toml")
    assert load_config("mnist-ibp-0.1")["name"] == "mnist-ibp-0.1"
    assert (ROOT / "configs" / "mnist-ibp-0.1.toml").resolve() == (CONFIGS / "mnist-ibp-0.1.toml").resolve()
    with pytest.raises(FileNotFoundError, match="did you mean mnist-ibp-0.1"):
        load_config("mnist-ibp-01")
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        load_config("no/such/file.toml")
    assert main(["configs", "colt-mnist-0.1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(line.startswith("colt-mnist-0.1") for line in listed)
    assert any("COLT" in line for line in listed)  # each with its first comment line


def test_the_package_data_covers_what_the_code_reads():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = meta["tool"]["setuptools"]["package-data"]
    assert "configs/*.toml" in data["certkit"] and "*.npz" in data["certkit.data"]
    assert "scikit-learn" not in " ".join(meta["project"]["dependencies"])
    assert meta["project"]["license"] == "Apache-2.0"  # an SPDX expression
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200] and meta["project"]["license-files"] == ["LICENSE"]


def test_declared_lower_bounds_are_the_ones_ci_tests():
    """Every core dependency's lower bound in pyproject.toml is the version .ci/lowest installs (torch: 2.13.0)."""
    import re

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = dict(re.match(r"([a-z]+)>=([0-9.]+)", d).groups() for d in meta["project"]["dependencies"]
                    if ">=" in d and ";" not in d)
    lowest = dict(line.split("==") for line in (ROOT / ".ci/lowest.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert declared.pop("torch") == "2.13" and "torch==2.13.0" in (ROOT / ".ci/lowest").read_text()
    for name, version in declared.items():
        tested = [int(p) for p in lowest[name].split(".")]
        assert tested[:len(version.split("."))] == [int(p) for p in version.split(".")], (name, version, lowest[name])


def test_bundled_digits_load_without_scikit_learn(monkeypatch):
    from certkit.data import load_dataset

    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it would fail
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360 and train.x.shape[1:] == (1, 8, 8)
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) == 1.0
    assert sorted(set(train.y.tolist())) == list(range(10))


def test_auroc_is_the_mann_whitney_statistic():
    from certkit.bayes.run import auroc

    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])) == 1.0
    assert auroc(torch.tensor([0.3, 0.4]), torch.tensor([0.1, 0.2])) == 0.0
    # pairs (in, out): (1,2) > , (1,1) tie = 1/2, (3,2) <, (3,1) <  -> 1.5 / 4
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])) == pytest.approx(1.5 / 4)


def test_a_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'certkit\[onnx\]'"):
        require("onnx", "onnx", "loading ONNX networks")
    assert main(["certify", "--checkpoint", str(tmp_path / "net.onnx"), "--data", "digits", "--eps", "0.1"]) == 2
    assert "certkit[onnx]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from certkit.report import plot_accuracy_vs_eps

    with pytest.raises(MissingDependencyError, match=r"certkit\[plot\]"):
        plot_accuracy_vs_eps({"a": ([0, 1], [1, 0])}, tmp_path / "a.png")


def test_results_data_follows_the_rule():
    """benchmarks/results/README.md: no file over 5 MB, the folder under 60 MB, no optimiser state or caches."""
    root = ROOT / "benchmarks/results"
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and (root / "README.md").exists()
    big = [str(p.relative_to(root)) for p in files if p.stat().st_size > 5 * 2**20]
    assert not big, f"over 5 MB (gzip it or keep it elsewhere): {big}"
    assert sum(p.stat().st_size for p in files) < 60 * 2**20
    assert not [p for p in files if p.name == "train_state.pt" or ".warm-start" in p.parts]
