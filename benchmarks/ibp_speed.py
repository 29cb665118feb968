"""IBP-bound time over a plain forward pass, batch 256 (target: at most 3x).

    python benchmarks/ibp_speed.py [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from certkit import LinfBall, interval_bounds, margin_spec
from certkit.models import build


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}")
    print(f"{'model':12s} {'forward ms':>11s} {'IBP ms':>8s} {'IBP+spec ms':>12s} {'ratio':>6s} {'ratio+spec':>10s}")
    for name, shape in (("colt-mnist", (1, 28, 28)), ("mlp", (1, 28, 28)), ("colt-cifar-small", (3, 32, 32))):
        torch.manual_seed(0)
        model = build(name, shape, 10, [0.5] * shape[0], [0.25] * shape[0]).to(args.device).eval()
        x = torch.rand(args.batch, *shape, device=args.device)
        y = torch.randint(0, 10, (args.batch,), device=args.device)
        with torch.no_grad():
            t_fwd = timeit(lambda: model(x), args.repeats)
            t_ibp = timeit(lambda: interval_bounds(model, LinfBall(x, 0.1)), args.repeats)
            t_spec = timeit(lambda: interval_bounds(model, LinfBall(x, 0.1), margin_spec(y, 10)), args.repeats)
        print(f"{name:12s} {1e3 * t_fwd:11.2f} {1e3 * t_ibp:8.2f} {1e3 * t_spec:12.2f} {t_ibp / t_fwd:6.2f} "
              f"{t_spec / t_fwd:10.2f}")


if __name__ == "__main__":
    main()
