"""What any sound certifier could prove for one network of a saved posterior: IBP-certified against exactly
verified (the cascade: bounds, then HiGHS MILP on what is left; every input decided or reported as not) on the first
N test images at L∞ ε = 0.1. If the exact count is below a target, no tighter bound reaches it: the network has to
change. Default: weight sample 0 of the run (SWAG's samples coincide to ~1e-15).

    CERTKIT_DATA=../shared/data python benchmarks/bayes_exact_limit.py runs/bnn-fashion-mnist-swag-ibp [N=1000]
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import torch

from certkit.bayes.run import load_run
from certkit.data import load_dataset
from certkit.verify import certify


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    run, n = Path(args[0]), int(args[1]) if len(args) > 1 else 1000
    model, post, cfg = load_run(run)
    model.load_state_dict(post.samples[0], strict=False)  # the normalisation buffers stay the model's
    test = load_dataset(cfg["data"], "test")
    x, y = test.x[:n], test.y[:n]
    counts: collections.Counter = collections.Counter()
    t = time.time()
    for i in range(0, n, 100):
        xb, yb = x[i:i + 100], y[i:i + 100]
        exact = certify(model, xb, yb, 0.1, "cascade", timeout=60)
        counts["correct"] += int(exact.correct.sum())
        counts["ibp_certified"] += int(certify(model, xb, yb, 0.1, "ibp").certified.sum())
        counts["exact_certified"] += int(exact.certified.sum())
        counts.update(f"verdict_{v.verdict}" for v in exact.verdicts)
    print(json.dumps({"run": run.name, "sample": 0, "n": n, "eps": 0.1, **counts, "seconds": round(time.time() - t)}))


if __name__ == "__main__":
    main(sys.argv[1:])
