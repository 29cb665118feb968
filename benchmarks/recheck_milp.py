"""Re-decide, with the current code, the inputs that a stored cascade run proved by MILP (e.g. after a solver fix):
prints one JSON line per input (old and new verdict) and a summary. Resumable by skipping indices already in OUT.

    CERTKIT_DATA=../shared/data python benchmarks/recheck_milp.py benchmarks/results/colt-mnist-0.1/cascade.jsonl.gz \
        ../shared/models/colt/mnist_0.1.onnx OUT.jsonl [TIMEOUT=120]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import torch
from torch import nn

from certkit import Normalize
from certkit.data import load_dataset
from certkit.onnx_io import load_onnx
from certkit.verify import certify


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    stored, onnx_path, out = Path(args[0]), args[1], Path(args[2])
    timeout = float(args[3]) if len(args) > 3 else 120.0
    rows = [json.loads(line) for line in gzip.open(stored, "rt")][1:]
    todo = [r for r in rows if r.get("stage") == "milp"]
    done = {json.loads(line)["idx"] for line in out.read_text().splitlines()} if out.exists() else set()
    model = nn.Sequential(Normalize(0.1307, 0.3081), load_onnx(onnx_path)).eval()
    test = load_dataset("mnist", "test")
    with out.open("a") as f:
        for r in todo:
            if r["idx"] in done:
                continue
            i = r["idx"]
            torch.manual_seed(0)
            c = certify(model, test.x[i:i + 1], test.y[i:i + 1], r["eps"], "cascade", timeout=timeout)
            v = c.verdicts[0]
            f.write(json.dumps({"idx": i, "old": r["verdict"], "new": v.verdict, "stage": v.stage,
                                "seconds": round(sum(v.seconds.values()), 2)}) + "\n")
            f.flush()
    new = [json.loads(line) for line in out.read_text().splitlines()]
    print(json.dumps({"rechecked": len(new), "of": len(todo),
                      "still_verified": sum(x["new"] == "verified" for x in new),
                      "falsified": sum(x["new"] == "falsified" for x in new),
                      "unknown": sum(x["new"] == "unknown" for x in new)}))


if __name__ == "__main__":
    main(sys.argv[1:])
