"""Summarise a cascade results file: verdicts by deciding stage, and time per stage.

    python benchmarks/stage_times.py RESULTS.jsonl[.gz]
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from collections import Counter


def main(path: str) -> None:
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if not r.get("_header")]
    n = len(rows)
    print(f"{n} inputs: clean {sum(r['correct'] for r in rows) / n:.2%}, "
          f"certified {sum(r['certified'] for r in rows) / n:.2%}")
    by = Counter((r["verdict"], r["stage"]) for r in rows)
    for (verdict, stage), k in sorted(by.items()):
        print(f"  {verdict:9s} by {stage or '-':7s} {k:5d}")
    stages = sorted({s for r in rows for s in r["seconds"]})
    print(f"{'stage':8s} {'inputs':>6s} {'total s':>9s} {'mean s':>8s} {'max s':>8s}")
    for s in stages:
        t = [r["seconds"][s] for r in rows if s in r["seconds"]]
        print(f"{s:8s} {len(t):6d} {sum(t):9.1f} {statistics.mean(t):8.3f} {max(t):8.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
