"""Time of one certified-training step (bound, loss, backward) on COLT's MNIST ConvMed, batch 128, one thread:
IBP, CROWN-IBP with both output sides bounded (what certkit did before), CROWN-IBP with lower bounds only (what the
CROWN-IBP objective runs now), and loss fusion (one backward pass; ``[certified] loss_fusion = true``). Also the
robust losses on real MNIST test images with a COLT-trained and an IBP-trained net, to show what each bound gives.

    python benchmarks/crown_ibp_speed.py [--threads 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from certkit.bounds import interval_bounds
from certkit.bounds.linear import crown_bounds
from certkit.models import build
from certkit.specs import LinfBall, margin_spec, worst_case_logits
from certkit.train.certified import fused_ce_upper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--eps", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build("colt-mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)).train()
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    s, spec = LinfBall(x, args.eps), margin_spec(y, 10)

    def ce(lower):
        return F.cross_entropy(worst_case_logits(lower, y, 10), y)

    steps = {
        "ibp": lambda: ce(interval_bounds(model, s, spec).lower),
        "crown-ibp, both sides (before)": lambda: ce(crown_bounds(model, s, spec, intermediate="ibp").lower),
        "crown-ibp, lower bounds only": lambda: ce(crown_bounds(model, s, spec, intermediate="ibp",
                                                                bound_upper=False).lower),
        "crown-ibp, loss fusion": lambda: fused_ce_upper(model, s, y, interval_bounds(model, s, spec), 10).mean(),
    }
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"ConvMed, batch 128, eps {args.eps}, mean of {args.repeat} steps after one warm-up")
    times = {}
    for name, loss in steps.items():
        model.zero_grad()
        loss().backward()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            model.zero_grad()
            loss().backward()
        times[name] = (time.perf_counter() - t0) / args.repeat
    for name, t in times.items():
        print(f"{name:34s} {t:7.3f} s/step  {t / times['ibp']:5.1f}x IBP")
    before, now = times["crown-ibp, both sides (before)"], times["crown-ibp, lower bounds only"]
    print(f"lower bounds only: {before / now:.2f}x faster than before; "
          f"loss fusion: {before / times['crown-ibp, loss fusion']:.2f}x")
    for path in ("benchmarks/results/colt-mnist-0.1-cpu/model.safetensors",
                 "benchmarks/results/mnist-ibp-0.1-k05/model.safetensors"):
        tightness(args.eps, path)


def tightness(eps: float, path: str) -> None:
    """Mean robust CE of each bound on the first 128 MNIST test images (lower is tighter)."""
    from certkit.data import DataError, load_dataset
    from certkit.io import load_model

    try:
        test = load_dataset("mnist", "test").subset(0, 128)
    except DataError:
        print("tightness skipped: no MNIST (set CERTKIT_DATA)")
        return
    model, _ = load_model(path)
    x, y = test.x, test.y
    for e in (eps / 5, eps / 2, eps):
        s, spec = LinfBall(x, e), margin_spec(y, 10)
        with torch.no_grad():
            ibp = interval_bounds(model, s, spec)
            crown = crown_bounds(model, s, spec, intermediate="ibp", bound_upper=False).lower
            fused = fused_ce_upper(model, s, y, ibp, 10).mean()
        row = {"ibp": F.cross_entropy(worst_case_logits(ibp.lower, y, 10), y),
               "crown-ibp": F.cross_entropy(worst_case_logits(crown, y, 10), y), "loss fusion": fused}
        print(f"{path.split('/')[-2]} at eps {e:g}, mean robust CE: "
              + ", ".join(f"{k} {float(v):.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
