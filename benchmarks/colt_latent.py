"""COLT's Fig. 3: accuracy under attack in the input and in every latent layer, for models (e.g. the stages of
a COLT run, or COLT's released network), on the first N MNIST test images. Prints a table; writes a PNG.

    python benchmarks/colt_latent.py MODEL... [--n 500] [--eps 0.1] [--out latent.png]

MODEL: a certkit checkpoint (.safetensors), or 'colt-released' for ../shared/models/colt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from certkit.attacks.latent import latent_robustness
from certkit.data import data_root, load_dataset
from certkit.io import load_model
from certkit.models import load_colt_mnist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "test", data_root()).subset(0, args.n)
    rows = {}
    for name in args.models:
        if name == "colt-released":
            model = load_colt_mnist(Path("../shared/models/colt/mnist_0.1_convmed_flat_2_2_100.pt"))
        else:
            model = load_model(name)[0].eval()
        torch.manual_seed(0)
        rows[name] = latent_robustness(model, data.x, data.y, args.eps, args.steps)
        print(name, "  ".join(f"{k}: {v:.2%}" for k, v in rows[name].items()), flush=True)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, r in rows.items():
            ax.plot(list(r), [100 * v for v in r.values()], marker="o", label=Path(name).stem)
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_title(f"latent attacks, MNIST eps={args.eps}, {args.n} test images")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print("plot:", args.out)


if __name__ == "__main__":
    main()
