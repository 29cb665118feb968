"""VNN-COMP 2022 mnist_fc (90 instances) with `certkit verify`'s cascade, checked against the ground truth.

    python benchmarks/vnncomp_mnist_fc.py [--timeout 120] [--out benchmarks/results/vnncomp-mnist_fc]

Resumable: instances already in results.jsonl are skipped. Prints per-instance answers, the number of
instances decided, any answer that contradicts ground_truth.csv, and the competition tools' counts.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from certkit import __version__
from certkit.io import ResultsWriter
from certkit.onnx_io import load_onnx
from certkit.verify.vnnlib import read_vnnlib, verify_vnnlib

TOOLS = ["alpha_beta_crown", "mn_bab", "nnenum", "verinet", "peregrinn", "marabou", "debona", "cgdtest",
         "averinn", "verapak"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/vnncomp/2022/mnist_fc")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", default="benchmarks/results/vnncomp-mnist_fc")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N instances")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root, out = Path(args.root), Path(args.out)
    truth = list(csv.DictReader(open(root / "ground_truth.csv")))[: args.limit]
    writer = ResultsWriter(out / "results.jsonl", key="instance",
                           header={"timeout": args.timeout, "certkit_version": __version__})
    models = {}
    for row in truth:
        inst = f"{row['onnx']} {row['vnnlib']}"
        if inst in writer.done:
            continue
        net = root / (row["onnx"] + ("" if (root / row["onnx"]).exists() else ".gz"))
        spec = root / (row["vnnlib"] + ("" if (root / row["vnnlib"]).exists() else ".gz"))
        if net not in models:
            models[net] = load_onnx(net)
        model = models[net]
        t0 = time.perf_counter()
        answer, _ = verify_vnnlib(model, read_vnnlib(spec), model.input_shape, timeout=args.timeout)
        dt = time.perf_counter() - t0
        writer.write([{"instance": inst, "answer": answer, "seconds": round(dt, 2), "truth": row["gt"]}])
        print(f"{inst:60s} {answer:8s} {dt:7.1f}s  truth={row['gt']}", flush=True)
    rows = {r["instance"]: r for r in writer.results}
    decided = [r for r in rows.values() if r["answer"] in ("sat", "unsat")]
    wrong = [r for r in decided if r["truth"] in ("sat", "unsat") and r["answer"] != r["truth"]]
    lines = [f"certkit {__version__}, timeout {args.timeout:.0f} s, {len(rows)} of {len(truth)} instances run",
             f"decided: {len(decided)} (sat {sum(r['answer'] == 'sat' for r in decided)}, "
             f"unsat {sum(r['answer'] == 'unsat' for r in decided)}); contradicting ground truth: {len(wrong)}",
             f"time on decided instances: {sum(r['seconds'] for r in decided):.0f} s", "",
             "competition tools (answers matching the ground truth, from ground_truth.csv):"]
    for tool in TOOLS:
        if tool in truth[0]:
            ok = sum(r[tool] == r["gt"] and r[tool] in ("sat", "unsat") for r in truth)
            lines.append(f"  {tool:18s} {ok}")
    for r in wrong:
        lines.append(f"CONTRADICTION: {r['instance']} answered {r['answer']}, truth {r['truth']}")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
