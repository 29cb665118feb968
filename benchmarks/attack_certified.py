"""Soundness check of a stored cascade run: attack every input it certified with PGD far stronger than the cascade's
own (both the CW-margin and cross-entropy losses, many restarts). A counterexample to any certificate is an
unsoundness: the script prints it and exits with 1.

    CERTKIT_DATA=../shared/data python benchmarks/attack_certified.py CASCADE.jsonl[.gz] CHECKPOINT \
        [--steps 200] [--restarts 10] [--batch 500]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time

import torch

from certkit.attacks.pgd import pgd
from certkit.data import load_dataset
from certkit.io import load_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cascade")
    p.add_argument("checkpoint")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's training config, else mnist)")
    args = p.parse_args()
    opener = gzip.open if args.cascade.endswith(".gz") else open
    with opener(args.cascade, "rt") as f:
        rows = [r for r in map(json.loads, f) if not r.get("_header")]
    eps = {r["eps"] for r in rows}
    if len(eps) != 1:
        raise SystemExit(f"expected one epsilon in {args.cascade}, got {sorted(eps)}")
    eps_value = eps.pop()
    certified = sorted(r["idx"] for r in rows if r["certified"])
    model, meta = load_model(args.checkpoint, args.device)
    data = load_dataset(args.data or (meta.get("config") or {}).get("data") or "mnist", "test")
    gen = torch.Generator().manual_seed(0)  # noise is drawn on the CPU (device-independent draws)
    broken: list[int] = []
    start = time.perf_counter()
    for i in range(0, len(certified), args.batch):
        ids = certified[i:i + args.batch]
        x, y = data.x[ids].to(args.device), data.y[ids].to(args.device)
        hit = torch.zeros(len(ids), dtype=torch.bool, device=args.device)
        for loss in ("margin", "ce"):
            res = pgd(model, x, y, eps_value, steps=args.steps, restarts=args.restarts, loss=loss, generator=gen)
            hit |= res.success
        broken += [ids[j] for j in hit.nonzero().flatten().tolist()]
    seconds = time.perf_counter() - start
    print(f"{len(certified)} certified inputs at eps {eps_value}; PGD-{args.steps} x {args.restarts} restarts x "
          f"2 losses broke {len(broken)} ({seconds:.0f} s)")
    if broken:
        print("UNSOUND: counterexamples to certificates at indices", broken)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
