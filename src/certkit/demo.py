"""``certkit demo``: IBP-train a small conv net on the bundled 8×8 digits, certify it, plot.

Runs in well under a minute on two CPU cores and needs no downloads.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from certkit.data import load_dataset
from certkit.errors import MissingDependencyError
from certkit.report import format_table, plot_accuracy_vs_eps
from certkit.train import TrainConfig, train
from certkit.verify import certify_dataset, summarize

DEMO_EPS = [0.0, 0.02, 0.05, 0.1, 0.15]


def demo_config(epochs: int | None = None, device: str = "cpu") -> TrainConfig:
    return TrainConfig(
        name="demo", data="digits", arch="small-conv", objective="ibp", epochs=epochs or 150, batch_size=64,
        lr=2e-3, lr_milestones=[112, 135], lr_gamma=0.3, eps=0.15, warmup_epochs=5, ramp_epochs=60,
        kappa_end=0.25, eval_eps=0.1, eval_n=360, device=device, seed=0,
    )


def run_demo(out_dir: str | Path = "runs/demo", device: str = "cpu", epochs: int | None = None) -> list[dict]:
    t0 = time.time()
    torch.manual_seed(0)
    out = Path(out_dir)
    cfg = demo_config(epochs, device)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    print(f"certkit demo: IBP training of '{cfg.arch}' on the 8x8 digits ({len(train_set)} train, "
          f"{len(test_set)} test images), eps_train={cfg.eps}, {cfg.epochs} epochs")
    model, _ = train(cfg, out, resume=True, progress=False, log=False, train_set=train_set, test_set=test_set)
    t_train = time.time() - t0
    rows = certify_dataset(model, test_set.x.to(device), test_set.y.to(device), DEMO_EPS, "ibp", "inf",
                           pgd_steps=40, pgd_restarts=2)
    summary = summarize(rows)
    print(format_table(summary))
    curves = {name: ([s["eps"] for s in summary], [s[key] for s in summary])
              for name, key in (("clean", "clean"), ("PGD-40", "pgd"), ("IBP-certified", "certified"))}
    try:
        png = plot_accuracy_vs_eps(curves, out / "demo_certified_accuracy.png", title="IBP-trained net, 8x8 digits")
    except MissingDependencyError as e:  # plots are an extra
        png = f"skipped ({e})"
    print(f"trained in {t_train:.0f} s, total {time.time() - t0:.0f} s; plot: {png}; checkpoint: "
          f"{out / 'model.safetensors'}")
    return summary
