"""Certify throughput of a smoothed classifier (noise samples per second) against a bare batched forward pass of
the same base classifier on the same batch size (target: at least 0.9 of it).

    python benchmarks/smoothing_speed.py [--arch lenet] [--batch 250] [--n 20000] [--threads N] [--device cpu] \
        [--layout channels_last|contiguous] [--compile]

`certkit smooth` runs image models channels-last (2-4x faster LeNet convolutions on CPU than the default layout)
with 250 draws per forward pass on CPU; the ratio is measured in whichever layout is chosen. ``--compile`` measures
both the bare pass and the counting through ``torch.compile`` (``certkit smooth certify --compile``).
"""

from __future__ import annotations

import argparse
import time

import torch

from certkit.models import build
from certkit.smoothing import CompiledBase, Noise, Smooth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="lenet")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--layout", default="channels_last", choices=["channels_last", "contiguous"])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.arch, (1, 28, 28), 10, [0.1307], [0.3081]).to(args.device).eval()
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = CompiledBase(model)
    x = torch.rand(1, 1, 28, 28, device=args.device)
    smooth = Smooth(model, 10, Noise("gaussian", 0.25), args.batch)
    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(args.batch, 1, 28, 28, device=args.device)
    with torch.no_grad():
        model(batch)  # warm-up
        smooth.counts(x, args.batch, gen)
        t = time.perf_counter()
        for _ in range(args.n // args.batch):
            model(batch).argmax(1)
        bare = (args.n // args.batch) * args.batch / (time.perf_counter() - t)
        t = time.perf_counter()
        smooth.counts(x, args.n, gen)
        smoothed = args.n / (time.perf_counter() - t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.arch}, "
          f"batch {args.batch}, {args.layout}{', compiled' if args.compile else ''}")
    print(f"bare forward: {bare:,.0f} samples/s; smoothed counting: {smoothed:,.0f} samples/s; "
          f"ratio {smoothed / bare:.2f}")


if __name__ == "__main__":
    main()
