"""Bound methods on COLT's released MNIST network, L∞ ε=0.1, a batch of test images (issue 3's speed target).

Reference on this 2-core CPU (a widely used bound library, batch 100): IBP 0.02 s, CROWN 18 s certifying 94,
output-layer-optimised CROWN 65 s certifying 95. Target: CROWN ≤ 6 s, α-CROWN certifying ≥ 95 in ≤ 22 s.

    python benchmarks/verify_speed.py [--n 100] [--threads 2] [--device cpu] [--iterations 20] [--repeat 1]

With ``--repeat R`` every method runs R times and the fastest and the median time are printed (use R ≥ 3 to
compare two versions on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from certkit import LinfBall, margin_spec
from certkit.bounds.interval import interval_bounds
from certkit.bounds.linear import alpha_crown_bounds, crown_bounds
from certkit.data import data_root, load_dataset
from certkit.models import load_colt_mnist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--model", default="../shared/models/colt/mnist_0.1_convmed_flat_2_2_100.pt")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_colt_mnist(args.model).to(args.device)
    data = load_dataset("mnist", "test", data_root()).subset(0, args.n)
    x, y = data.x.to(args.device), data.y.to(args.device)
    s, spec = LinfBall(x, 0.1, domain=(0.0, 1.0)), margin_spec(y, 10)
    correct = model(x).argmax(1) == y
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.n} images, "
          f"{int(correct.sum())} correct")
    print(f"{'method':10s} {'seconds':>8s} {'median':>8s} {'certified':>9s}")
    runs = {
        "ibp": lambda: interval_bounds(model, s, spec),
        "crown": lambda: crown_bounds(model, s, spec),
        "alpha": lambda: alpha_crown_bounds(model, s, spec, iterations=args.iterations, bound_upper=False),
    }
    for name, fn in runs.items():
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            with torch.no_grad():  # as in certify(); α-CROWN enables gradients for its slopes only
                b = fn()
            times.append(time.perf_counter() - t)
        cert = int(((b.lower.min(1).values > 0) & correct).sum())
        print(f"{name:10s} {min(times):8.2f} {statistics.median(times):8.2f} {cert:9d}")


if __name__ == "__main__":
    main()
