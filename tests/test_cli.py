import json
import subprocess
import sys
from pathlib import Path

import pytest

from certkit.cli import main

CONFIG = """
name = "tiny"
[data]
dataset = "digits"
train_n = 256
[model]
arch = "small-conv"
[train]
objective = "ibp"
epochs = 1
batch_size = 128
eps = 0.05
ramp_epochs = 1
[eval]
eps = 0.05
n = 50
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.toml").write_text(CONFIG)
    assert main(["train", "--config", str(d / "tiny.toml"), "--out", str(d / "run"), "--quiet",
                 "--set", "train.epochs=2"]) == 0  # a command-line override of the config
    assert len((d / "run" / "history.jsonl").read_text().splitlines()) == 2
    return d


def test_train_then_certify_and_resume(trained, capsys):
    ckpt = trained / "run" / "model.safetensors"
    out = trained / "cert.jsonl"
    args = ["certify", "--checkpoint", str(ckpt), "--data", "digits", "--eps", "0", "0.05", "--n", "40",
            "--pgd-steps", "5", "--float64-check", "--out", str(out), "--plot", str(trained / "p.png"), "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "certified" in text and "pgd" in text
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["_header"] and len(rows) == 81
    assert (trained / "p.png").stat().st_size > 1000
    assert main(args) == 0  # a rerun resumes: nothing is written twice
    assert len(out.read_text().splitlines()) == 81
    from certkit.io import hold_lock

    busy = hold_lock(out)  # a second certification of the same file, still running
    capsys.readouterr()
    assert main(args) == 2 and "in use by another run" in capsys.readouterr().err
    busy.close()
    assert len(out.read_text().splitlines()) == 81
    res = trained / "transfer.jsonl"
    assert main(["attack", "--checkpoint", str(ckpt), "--data", "digits", "--eps", "0.05", "0.1", "--count", "20",
                 "--method", "transfer", "--source", str(ckpt), "--pgd-steps", "5", "--out", str(res)]) == 0
    rows = [json.loads(x) for x in res.read_text().splitlines()]
    assert rows[0]["source"] == rows[0]["target"] == str(ckpt) and rows[0]["method"] == "transfer"
    assert len(rows) == 41 and {r["eps"] for r in rows[1:]} == {0.05, 0.1}  # a row per radius and input
    res = trained / "boundary.jsonl"
    assert main(["attack", "--checkpoint", str(ckpt), "--data", "digits", "--eps", "0.5", "1", "2", "--norm", "2",
                 "--count", "20", "--method", "boundary", "--boundary-steps", "100", "--out", str(res)]) == 0
    rows = [json.loads(x) for x in res.read_text().splitlines()][1:]
    robust = [sum(r["robust"] for r in rows if r["eps"] == e) for e in (0.5, 1, 2)]
    assert robust[0] >= robust[1] >= robust[2] and all(r["robust"] or r["distance"] <= r["eps"] for r in rows)
    with pytest.raises(SystemExit, match="needs --source"):
        main(["attack", "--checkpoint", str(ckpt), "--data", "digits", "--eps", "0.1", "--method", "transfer"])
    assert main(["attack", "--checkpoint", str(ckpt), "--data", "digits", "--eps", "0.05", "--n", "20",
                 "--steps", "5"]) == 0


def test_bad_input_gives_clear_errors(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "model.safetensors")
    with pytest.raises(SystemExit):
        main(["certify", "--checkpoint", ckpt, "--data", "digits", "--eps", "-0.1"])
    assert main(["certify", "--checkpoint", str(tmp_path / "nope.safetensors"), "--eps", "0.1"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    assert main(["certify", "--checkpoint", str(bad), "--eps", "0.1"]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["certify", "--checkpoint", ckpt, "--data", "mnist", "--data-dir", str(tmp_path), "--eps", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "missing file" in err or "shape" in err
    (tmp_path / "bad.toml").write_text("[train]\nepocs = 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "bad.toml"), "--set", "train.lr"]) == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err


def test_console_script_exists():
    r = subprocess.run([sys.executable, "-m", "certkit.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "certkit" in r.stdout


def test_certify_onnx_with_the_cascade_and_resume(shared, mnist_dir, tmp_path, capsys):
    out = tmp_path / "colt.jsonl"
    args = ["certify", "--checkpoint", str(shared / "models/colt/mnist_0.1.onnx"), "--mean", "0.1307",
            "--std", "0.3081", "--data", "mnist", "--data-dir", str(mnist_dir), "--eps", "0.1", "--n", "4",
            "--method", "cascade", "--timeout", "60", "--out", str(out), "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "no --mean/--std" not in captured.err  # given: no warning
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len(rows) == 4 and all(r["verdict"] in ("verified", "falsified", "unknown") for r in rows)
    assert all(r["certified"] == (r["verdict"] == "verified") for r in rows)
    assert all(set(r["seconds"]) <= {"attack", "ibp", "crown", "alpha", "bab", "milp"} for r in rows)
    assert sum(r["certified"] for r in rows) >= 3  # COLT's net is robust on most test images at 0.1
    printed = captured.out
    assert "| verified | falsified | unknown |" in printed and "s/input" in printed  # honest summary
    bare = [a for a in args if a not in ("--mean", "0.1307", "--std", "0.3081")]
    assert main(bare[:bare.index("--method")] + ["--method", "ibp", "--out", str(tmp_path / "bare.jsonl")]) == 0
    assert "no --mean/--std was given" in capsys.readouterr().err  # an ONNX net without normalisation is named
    assert main(args) == 0  # resumes: nothing new
    assert len(out.read_text().splitlines()) == 5


def test_branch_and_bound_proves_an_input_the_bounds_cannot(shared, mnist_dir, tmp_path):
    """MNIST test image 6 on COLT's net: α-CROWN's margin bound is about −2.5, the complete MILP takes ~10 min,
    branch and bound ~10 s."""
    out = tmp_path / "bab.jsonl"
    common = ["certify", "--checkpoint", str(shared / "models/colt/mnist_0.1.onnx"), "--mean", "0.1307", "--std",
              "0.3081", "--data", "mnist", "--data-dir", str(mnist_dir), "--eps", "0.1", "--start", "6", "--n", "1",
              "--quiet"]
    assert main(common + ["--method", "alpha", "--out", str(tmp_path / "alpha.jsonl")]) == 0
    alpha = json.loads((tmp_path / "alpha.jsonl").read_text().splitlines()[1])
    assert alpha["idx"] == 6 and not alpha["certified"] and alpha["margin_lb"] < -1
    assert main(common + ["--method", "bab", "--timeout", "300", "--out", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[1])
    assert row["idx"] == 6 and row["certified"] and row["margin_lb"] > 0
    assert row["verdict"] == "verified" and row["stage"] == "bab"  # bab rows record their verdict


def test_radius_and_verify_commands(shared, mnist_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["radius", "--checkpoint", str(shared / "models/colt/mnist_0.1.onnx"), "--mean", "0.1307",
                 "--std", "0.3081", "--data", "mnist", "--data-dir", str(mnist_dir), "--n", "3", "--method", "ibp",
                 "--hi", "0.2", "--tol", "0.01", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len(rows) == 3 and all(0 <= r["radius"] <= 0.2 for r in rows)
    root = shared / "vnncomp/2022/mnist_fc"
    res = tmp_path / "res.txt"
    assert main(["verify", str(root / "onnx/mnist-net_256x2.onnx.gz"), str(root / "vnnlib/prop_1_0.03.vnnlib.gz"),
                 "--timeout", "60", "--out", str(res)]) == 0
    said = capsys.readouterr()
    assert said.out.strip().endswith("sat") and "box 1/1: falsified by attack" in said.err  # stages on stderr
    assert res.read_text().startswith("sat\n((X_0 ")


@pytest.mark.parametrize("argv, flag", [(["vae", "eval"], "--checkpoint"), (["bayes", "train"], "--config"),
                                        (["smooth", "report"], "--results"), (["smooth", "certify"], "--checkpoint")])
def test_missing_required_options_give_clear_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 or flag in str(exit_.value.code)
    assert flag in capsys.readouterr().err + str(exit_.value.code)


def _parsers(parser, path=()):
    """Every (sub-)command parser under ``parser``, with the words that reach it."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_has_help_and_shows_its_default():
    from certkit.cli import build_parser

    seen = 0
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"certkit {' '.join(path)} {action.option_strings[0]} has no help"
                seen += 1
        if "--threads" in text:
            assert "--threads" in text and "default" in text
    assert seen > 150
    help_ = build_parser()._subparsers._group_actions[0].choices["smooth"]
    certify = help_._subparsers._group_actions[0].choices["certify"].format_help()
    assert "(default: 100000)" in certify and "--attack" not in certify  # smooth certify lists only its options
    assert "--radii" not in help_._subparsers._group_actions[0].choices["attack"].format_help()


@pytest.mark.parametrize("argv, hint", [(["smooth", "certify", "--checkpoint", "m", "--sigmaa", "0.25"], "--sigma"),
                                        (["certfy"], "certify"), (["certify", "--method", "crwn", "--eps", "0.1"],
                                                                  "crown"), (["smooth", "certfy"], "certify")])
def test_typos_get_a_did_you_mean(argv, hint, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "did you mean" in err and hint in err.split("did you mean")[1]


def test_results_never_go_into_a_folder_of_released_models(tmp_path, monkeypatch, capsys):
    import argparse

    from certkit.cli import _default_out

    monkeypatch.chdir(tmp_path)
    shared = argparse.Namespace(checkpoint=str(tmp_path / "models/colt/mnist_0.1.onnx"))
    assert _default_out(shared, "c.jsonl") == Path("runs/mnist_0.1/c.jsonl")
    run = argparse.Namespace(checkpoint="runs/ibp/model.safetensors")
    assert _default_out(run, "c.jsonl") == Path("runs/ibp/c.jsonl")
    assert "results: runs/ibp/c.jsonl" in capsys.readouterr().err


def test_choices_named_before_torch_loads_match_the_engine_and_help_needs_no_torch():
    import subprocess
    import sys

    from certkit import cli
    from certkit.smoothing.smooth import RULES
    from certkit.verify.cascade import METHODS
    from certkit.verify.certify import COMPLETE

    assert list(cli.CERTIFICATES) == list(RULES)
    assert list(cli.BOUND_METHODS) == list(METHODS) and list(cli.COMPLETE_METHODS) == list(COMPLETE)
    probe = ("import sys; from certkit.cli import main\n"
             "try: main(['certify', '--help'])\nexcept SystemExit: pass\n"
             "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")  # --help (and a typo) answer before torch is imported


def test_one_vocabulary_across_commands():
    from certkit.cli import build_parser

    reads_files_only = (("configs",), ("smooth", "report"))
    leaves = {" ".join(path): parser for path, parser in _parsers(build_parser())
              if path and not parser._subparsers and path not in reads_files_only}
    for name, parser in leaves.items():
        opts = parser._option_string_actions
        assert {"--quiet", "--device", "--threads"} <= set(opts), name
        assert ("--seed" in opts) == (name != "train"), name  # training seeds from its config
        if "--data" in opts and name not in ("train",):
            assert "--count" in opts, f"{name}: images are --count"
        assert "--steps" not in opts or name == "smooth attack" or opts["--steps"].dest == "pgd_steps", name
    assert "--data-dir" not in leaves["verify"]._option_string_actions
    args = build_parser().parse_args(["certify", "--checkpoint", "m", "--eps", "0.1", "--n", "7"])
    assert args.count == 7  # the old spelling still works
    args = build_parser().parse_args(["attack", "--checkpoint", "m", "--eps", "0.1", "--steps", "9"])
    assert args.pgd_steps == 9
