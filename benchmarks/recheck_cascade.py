"""Re-decide, with the current cascade, the inputs of a stored cascade run that a given stage decided or that were
left undecided (e.g. after a solver fix, or to close the unknowns with a new stage): one JSON line per input (old
and new verdict, deciding stage, seconds) and a summary. Resumable: indices already in OUT are skipped.

    CERTKIT_DATA=../shared/data python benchmarks/recheck_cascade.py STORED.jsonl.gz NET OUT.jsonl \
        [TIMEOUT=120] [WHICH=milp]

NET: an ONNX file (MNIST normalisation put in front, as for COLT's released net) or a certkit checkpoint.
WHICH: comma-separated stored stages to redo, ``unknown`` for the undecided inputs, and/or test-set indices.
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
from certkit.io import load_model
from certkit.onnx_io import load_onnx
from certkit.verify import certify


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    stored, net, out = Path(args[0]), args[1], Path(args[2])
    timeout = float(args[3]) if len(args) > 3 else 120.0
    which = set((args[4] if len(args) > 4 else "milp").split(","))
    rows = [json.loads(line) for line in gzip.open(stored, "rt")][1:]
    ids = {int(w) for w in which if w.isdigit()}
    todo = [r for r in rows if r.get("stage") in which or ("unknown" in which and r.get("verdict") == "unknown")
            or r["idx"] in ids]
    done = {json.loads(line)["idx"] for line in out.read_text().splitlines()} if out.exists() else set()
    if net.endswith(".onnx"):
        model = nn.Sequential(Normalize(0.1307, 0.3081), load_onnx(net)).eval()
    else:
        model = load_model(net, "cpu")[0].eval()
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
                      "verified": sum(x["new"] == "verified" for x in new),
                      "falsified": sum(x["new"] == "falsified" for x in new),
                      "unknown": sum(x["new"] == "unknown" for x in new),
                      "mean_seconds": round(sum(x["seconds"] for x in new) / max(len(new), 1), 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])
