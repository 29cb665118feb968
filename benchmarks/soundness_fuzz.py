"""A soundness campaign: random networks, input sets and specs through every bound, verifier and certificate
(:mod:`certkit.fuzz`), for a time budget; prints the counts and every violation, and writes them as JSON.

    python benchmarks/soundness_fuzz.py --budget 3600 [--start 0] [--timeout 2] [--out fuzz.json] [--threads 1]

Seeds run in order from ``--start``; a campaign is reproduced by its start seed and the number of cases it
reports (``--stop``). Exit status 1 if any violation is found.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

import certkit
from certkit import fuzz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="seconds")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--stop", type=int, default=10**9, help="seed to stop before")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per complete verification")
    ap.add_argument("--checks", default=",".join(fuzz.CHECKS), help=f"comma-separated subset of {fuzz.CHECKS}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--out", default=None, help="JSON summary")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    checks = tuple(c for c in args.checks.split(",") if c)
    print(f"certkit {certkit.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s); checks {', '.join(checks)}; budget {args.budget:.0f} s", flush=True)
    last = [time.perf_counter()]

    def progress(seed: int, st: fuzz.Stats) -> None:
        if time.perf_counter() - last[0] >= args.every:
            last[0] = time.perf_counter()
            print(f"seed {seed}: {st.summary()}", flush=True)
            for v in st.violations[-3:]:
                print("  ", v, flush=True)

    st = fuzz.run(range(args.start, args.stop), checks, args.timeout, args.budget, progress)
    print(st.summary())
    print("skipped (a domain without a rule for an op):", dict(st.skipped) or "none")
    for v in st.violations:
        print("VIOLATION", v)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"start": args.start, "cases": st.cases, "points": st.points, "bound_checks": st.bound_checks,
                       "verdicts": dict(st.verdicts), "skipped": dict(st.skipped), "violations": st.violations,
                       "seconds": round(st.seconds, 1), "checks": checks, "torch": torch.__version__,
                       "certkit": certkit.__version__, "date": time.strftime("%Y-%m-%d")}, f, indent=1)
    return 1 if st.violations else 0


if __name__ == "__main__":
    sys.exit(main())
