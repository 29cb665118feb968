"""Scale-out on Ray: wall time of the plain path, 1 and 2 Ray workers (one torch thread each), measured in one run.

    python benchmarks/scale_out.py [--colt PATH] [--smooth CKPT] [--n-crown 1000] [--n-smooth 100] [--draws 10000]

Rows: CROWN certification of COLT's MNIST net (ε = 0.1, batches of 16) and Cohen certification of a σ = 0.25
LeNet (N draws, one input per task), each run in this process (1 thread), on a local Ray runtime with 1 worker
and with 2 workers; the runtime's start is timed apart from the run. Every run's rows are checked equal to the
plain run's (verdicts and margins; smoothing counts). Then a two-node cluster on this machine (``ray start
--head`` and a second ``ray start --address`` node, one CPU each) certifies with CROWN again and prints the tasks
each node ran. Results: ``benchmarks/results/scale-out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from certkit.data import load_dataset
from certkit.io import load_model
from certkit.nn import Normalize
from certkit.onnx_io import load_onnx
from certkit.parallel import Executor
from certkit.smoothing import Noise, Smooth
from certkit.smoothing.run import certify_dataset as smooth_certify
from certkit.verify import certify_dataset

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"time_s", "seconds", "time"}


def stable(rows):
    return sorted(json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True) for r in rows)


def timed(run, executor: Executor | None):
    """(seconds to start the runtime, seconds of the run, rows)."""
    t0 = time.perf_counter()
    if executor is not None and executor.distributed:
        executor._ray()
    t1 = time.perf_counter()
    rows = run(executor or Executor())
    return t1 - t0, time.perf_counter() - t1, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--colt", default=str(ROOT.parent / "shared/models/colt/mnist_0.1.onnx"))
    p.add_argument("--smooth", default=str(ROOT / "benchmarks/results/smoothing-mnist/mnist-lenet-gaussian-0.25/"
                                              "model.safetensors"))
    p.add_argument("--data-dir", default=os.environ.get("CERTKIT_DATA"))
    p.add_argument("--n-crown", type=int, default=1000)
    p.add_argument("--n-smooth", type=int, default=100)
    p.add_argument("--draws", type=int, default=10_000)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scale-out/scale_out.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(1)
    data = load_dataset("mnist", "test", args.data_dir)
    colt = torch.nn.Sequential(Normalize([0.1307], [0.3081]), load_onnx(args.colt)).eval()
    lenet, _ = load_model(args.smooth)
    lenet = lenet.to(memory_format=torch.channels_last)
    xc, yc = data.x[:args.n_crown], data.y[:args.n_crown]
    xs, ys = data.x[:args.n_smooth], data.y[:args.n_smooth]
    tmp = Path(tempfile.mkdtemp())

    jobs = {
        f"CROWN, COLT's net, {args.n_crown} inputs": lambda ex: certify_dataset(colt, xc, yc, [0.1], "crown",
                                                                               batch_size=16, executor=ex),
        f"smoothing, LeNet σ=0.25, {args.n_smooth} inputs, N={args.draws}": lambda ex: smooth_certify(
            Smooth(lenet, 10, Noise("gaussian", 0.25), 250), xs, ys, list(range(len(ys))), 100, args.draws, 0.001,
            "cohen", tmp / f"s{time.perf_counter_ns()}", progress=False, executor=ex),
    }
    results = []
    for name, run in jobs.items():
        _, plain, ref = timed(run, None)
        row = {"job": name, "plain_s": round(plain, 1)}
        for workers in (1, 2):
            with Executor(workers=workers) as ex:
                start, seconds, rows = timed(run, ex)
            assert stable(rows) == stable(ref), f"{name}: {workers} workers gave other rows than the plain run"
            row[f"ray{workers}_s"] = round(seconds, 1)
            row[f"ray{workers}_start_s"] = round(start, 1)
        row["overhead_1_worker"] = round(row["ray1_s"] / plain - 1, 3)
        row["speedup_2_workers"] = round(plain / row["ray2_s"], 2)
        row["speedup_2_workers_with_start"] = round(plain / (row["ray2_s"] + row["ray2_start_s"]), 2)
        print(json.dumps(row), flush=True)
        results.append(row)

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = "6391"
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "1", "--port", port, "--include-dashboard=false"],
                   check=True, capture_output=True)
    try:
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1"], check=True,
                       capture_output=True)
        with Executor(address=f"127.0.0.1:{port}") as ex:
            n = min(args.n_crown, 320)
            _, seconds, rows = timed(lambda e: certify_dataset(colt, xc[:n], yc[:n], [0.1], "crown", batch_size=16,
                                                               executor=e), ex)
            nodes = dict(ex.tasks_per_node)
        two = {"job": f"CROWN, COLT's net, {n} inputs, two nodes on this machine (1 CPU each)",
               "seconds": round(seconds, 1), "tasks_per_node": {k[:8]: v for k, v in nodes.items()}}
        print(json.dumps(two), flush=True)
        results.append(two)
    finally:
        subprocess.run([ray_bin, "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    machine = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**machine, "rows": results}, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
