"""The Ray cases of tests/test_parallel.py, run there in a child pytest process (see that file for why)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from certkit.io import ResultsWriter
from certkit.parallel import Executor, UnsoundError, shards
from certkit.verify import certify_dataset, radius_dataset
from test_parallel import PATIENT_RAY, _data, _net, _stable

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.update(PATIENT_RAY)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers get this module's functions
    yield
    ray.shutdown()


@pytest.mark.parametrize("method", ["ibp", "crown", "cascade"])
def test_ray_rows_are_the_single_process_rows(local_ray, method, tmp_path):
    model, (x, y) = _net(), _data()
    opts = {"timeout": 60.0} if method == "cascade" else {}  # every input decides in < 1 s: no verdict hangs on time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs: with 2 threads a float32 margin can differ in its last bits
    try:
        plain = certify_dataset(model, x, y, [0.02, 0.1], method, batch_size=5, pgd_steps=5, **opts)
    finally:
        torch.set_num_threads(threads)
    with ResultsWriter(tmp_path / "r.jsonl", key="key") as w:
        ex = Executor(workers=2)
        rows = certify_dataset(model, x, y, [0.02, 0.1], method, batch_size=5, pgd_steps=5, writer=w, executor=ex,
                               **opts)
    assert len(rows) == 2 * len(y) and len({r["key"] for r in rows}) == len(rows)
    assert _stable(rows) == _stable(plain)  # the same verdicts, margins and PGD results
    assert sum(ex.tasks_per_node.values()) == 2 * 5  # 2 radii x 5 shards of 5 (the last of 4)
    if method == "cascade":
        assert {r["verdict"] for r in rows} <= {"verified", "falsified", "unknown"}


def test_ray_radius_and_smoothing_match_the_single_process_run(local_ray, tmp_path):
    from certkit.smoothing import Noise, Smooth
    from certkit.smoothing.run import certify_dataset as smooth_certify

    model, (x, y) = _net(), _data(10)
    plain = radius_dataset(model, x, y, "crown", hi=0.3, tol=1e-3, batch_size=4)
    on_ray = radius_dataset(model, x, y, "crown", hi=0.3, tol=1e-3, batch_size=4, executor=Executor(workers=2))
    assert _stable(on_ray) == _stable(plain) and len(on_ray) == 10

    smooth = Smooth(model, 3, Noise("gaussian", 0.25), batch_size=500)
    ids = list(range(100, 110))
    a = smooth_certify(smooth, x, y, ids, 50, 2000, 0.01, "cohen", tmp_path / "one", progress=False, seed=3)
    b = smooth_certify(smooth, x, y, ids, 50, 2000, 0.01, "cohen", tmp_path / "two", progress=False, seed=3,
                       batch_size=3, executor=Executor(workers=2))
    assert [r["counts"] for r in a] == [r["counts"] for r in b]  # noise of input i from the (seed, i) generator
    assert _stable(a) == _stable(b)
    assert (tmp_path / "one.tsv").read_text().split("\n")[1].split("\t")[:4] == \
        (tmp_path / "two.tsv").read_text().split("\n")[1].split("\t")[:4]  # Cohen's TSV, in the order of the inputs


def _dies_once(shared, items, marker):
    """Certifies like certify_shard, but the first task to run kills its own worker process (kill -9)."""
    from certkit.verify.certify import certify_shard

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    except FileExistsError:
        pass
    return certify_shard(shared, items, 0.05, "crown", "inf", 0, 1, False, "cpu", {})


def _fails_on_seven(shared, items):
    if 7 in items:
        raise ValueError("seven is not accepted")
    return [{"idx": i} for i in items]


def test_a_killed_worker_is_retried_and_every_row_is_written_once(local_ray, tmp_path):
    model, (x, y) = _net(), _data()
    plain = certify_dataset(model, x, y, [0.05], "crown", batch_size=4)
    shared = {"model": model, "x": x, "y": y, "ids": list(range(len(y)))}
    ex = Executor(workers=2)
    with ResultsWriter(tmp_path / "r.jsonl", key="key") as w:
        for _, rows in ex.map(_dies_once, shared, shards(range(len(y)), 4, marker=str(tmp_path / "died"))):
            w.write(rows)
    assert (tmp_path / "died").exists()  # a worker did die
    lines = [json.loads(s) for s in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["idx"] for r in lines) == list(range(len(y)))  # every input exactly once
    assert _stable(lines) == _stable(plain)

    errors = [r for _, rs in ex.map(_fails_on_seven, None, shards(range(10), 4),
                                    lambda i, a, m: {"idx": i, "error": m}) for r in rs]
    assert sorted(r["idx"] for r in errors) == list(range(10))
    assert [r for r in errors if "error" in r] == [{"idx": 7, "error": "ValueError: seven is not accepted"}]


def _unsound(shared, items):
    raise UnsoundError("input 3 certified at eps=0.1 but broken by PGD")


def test_an_unsound_certificate_stops_a_ray_run(local_ray):
    with pytest.raises(UnsoundError, match="broken by PGD"):
        list(Executor(workers=2).map(_unsound, None, shards(range(4), 2), lambda i, a, m: {"idx": i}))


def test_the_vnncomp_runner_and_bayes_eval_on_ray(local_ray, shared, tmp_path):
    from certkit.bayes.inference import Posterior
    from certkit.bayes.run import evaluate
    from certkit.verify.vnncomp import run_benchmark, score

    root = shared / "vnncomp" / "2021" / "test"
    if not root.exists():
        pytest.skip("no VNN-COMP benchmarks in ../shared")
    ex = Executor(workers=2)
    rows = run_benchmark(root, tmp_path / "r.csv", timeout_scale=0.5, progress=None, executor=ex)
    assert sorted(int(r["index"]) for r in rows) == list(range(5)) and sum(ex.tasks_per_node.values()) == 5
    ours, _, wrong = score(rows, root)
    assert ours.correct == 5 and not wrong  # as in one process (tests/test_vnncomp.py)
    sat = [r for r in rows if r["answer"] == "sat"]
    assert len(sat) == 1 and Path(sat[0]["counterexample"]).read_text().startswith("sat\n")

    model, (x, y) = _net(), _data(12)
    samples = [{k: v + 0.01 * s * torch.randn_like(v) for k, v in model.state_dict().items()} for s in range(3)]
    post = Posterior(model, samples, "test")
    plain = evaluate(model, post, x, y, 0.02, ("ibp", "crown"), pgd_steps=5, batch_size=5)
    assert evaluate(model, post, x, y, 0.02, ("ibp", "crown"), pgd_steps=5, batch_size=5, executor=ex) == plain


# The CLI with every certification task slowed by 0.3 s: the slow wrapper is defined in the launcher's __main__, so
# Ray pickles it by value and the workers run it too. The interrupted runs then write their rows over seconds, and
# the test's signals land mid-run (unslowed, a fresh CI machine finished the whole run before the first look).
SLOW_CLI = """
import importlib, sys, time
from certkit.cli import main
c = importlib.import_module("certkit.verify.certify")  # the module (the package's "certify" is a function)
original = c.certify_shard
def certify_shard(*a, **k):
    time.sleep(0.3)
    return original(*a, **k)
c.certify_shard = certify_shard
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_cli_on_ray_resumes_after_kill_9_of_the_driver(tmp_path):
    from certkit.io import save_model
    from certkit.models import build

    torch.manual_seed(0)
    model = build("small-conv", (1, 8, 8), 10, [0.3054], [0.3884])
    ckpt = save_model(tmp_path / "model.safetensors", model, {"name": "small-conv", "in_shape": [1, 8, 8],
                                                              "num_classes": 10, "mean": [0.3054],
                                                              "std": [0.3884], "kwargs": {}})
    out = tmp_path / "rows.jsonl"
    N = 120  # 2 x 30 tasks of 4 digits, each slowed by 0.3 s in the interrupted runs: ~5 s on two workers
    args = ["certify", "--checkpoint", str(ckpt), "--data", "digits", "--n", str(N), "--eps", "0.01", "0.02",
            "--method", "crown", "--batch-size", "4", "--out", str(out), "--quiet"]
    cmd = [sys.executable, "-m", "certkit.cli", *args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **PATIENT_RAY}

    def interrupt(sig: int, rows: int) -> subprocess.Popen:
        driver = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--workers", "2"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < rows):
            time.sleep(0.05)
        driver.send_signal(sig)
        driver.wait(timeout=60)
        return driver

    ctrl_c = interrupt(signal.SIGINT, 12)  # Ctrl-C: the workers are cancelled, the file stays resumable
    assert len(out.read_text().splitlines()) - 1 < 2 * N, "the run ended before it could be interrupted"
    assert ctrl_c.returncode == 130 and "resumes" in ctrl_c.stderr.read()
    first = len(out.read_text().splitlines()) - 1
    interrupt(signal.SIGKILL, first + 12)  # kill -9 of the driver, mid-run
    partial = len(out.read_text().splitlines()) - 1
    assert first < partial < 2 * N, (first, partial)
    done = subprocess.run([*cmd, "--workers", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tasks per node" in done.stderr
    rows = [json.loads(s) for s in out.read_text().splitlines()][1:]
    assert len(rows) == 2 * N and len({r["key"] for r in rows}) == 2 * N  # complete, nothing twice
    single = tmp_path / "single.jsonl"
    assert subprocess.run([*cmd[:-3], "--out", str(single), "--quiet"], env=env, timeout=300).returncode == 0
    assert _stable(rows) == _stable([json.loads(s) for s in single.read_text().splitlines()][1:])
