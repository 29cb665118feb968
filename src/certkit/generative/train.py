"""Training and evaluating proVAEs: maximise the certified ELBO bound (ε_train = 0: the standard VAE).

A run directory holds ``model.safetensors`` (weights + metadata), ``train_state.pt`` and ``history.jsonl``; a killed
run resumes from its last finished epoch (:mod:`certkit.train.checkpoint`, shared with the classifiers' loop).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from certkit.data import Dataset, load_dataset
from certkit.errors import ConfigError
from certkit.generative.vae import VAE, elbo_attack
from certkit.io import CheckpointError, ResultsWriter, read_dataclass, read_metadata
from certkit.train import checkpoint
from certkit.train.schedules import Ramp


@dataclass
class VAEConfig:
    name: str = "provae"
    data: str = "mnist"
    data_dir: str | None = None
    train_n: int | None = None
    latent: int = 50
    hidden: int = 256
    sigma0: float = 1.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    eps: float = 0.0  # ε_train: the bound is maximised at this radius (0: the plain ELBO)
    warmup_epochs: float = 0.0  # plain ELBO training (ε = 0) first
    ramp_epochs: float = 5.0  # then ε grows linearly from 0 over these epochs
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        cfg, _ = read_dataclass(cls, d, {"data": {"dataset": "data", "dir": "data_dir", "train_n": "train_n"}},
                                flat=None)
        if cfg.eps < 0 or cfg.sigma0 <= 0 or cfg.epochs <= 0:
            raise ConfigError("eps must be non-negative, sigma0 and epochs positive")
        return cfg


def load_vae(path: str | os.PathLike, device: str = "cpu") -> tuple[VAE, dict]:
    meta = read_metadata(path)
    arch = meta.get("arch", {})
    if arch.get("name") != "provae":
        raise CheckpointError(f"{path} is not a proVAE checkpoint (architecture {arch.get('name')!r})")
    vae = VAE(tuple(arch["in_shape"]), **arch["kwargs"])
    vae.load_state_dict(load_file(str(path)))
    return vae.to(device).eval(), meta


def _arch(cfg: VAEConfig, shape) -> dict:
    return {"name": "provae", "in_shape": list(shape), "num_classes": 0,
            "kwargs": {"latent": cfg.latent, "hidden": cfg.hidden, "sigma0": cfg.sigma0}}


def eps_ramp(cfg: VAEConfig) -> Ramp:
    """ε_train at a (fractional) epoch: 0 during warm-up, then linear up to ``cfg.eps`` over ``ramp_epochs``."""
    return Ramp(0.0, cfg.eps, cfg.warmup_epochs, cfg.ramp_epochs)


def train_vae(cfg: VAEConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
              train_set: Dataset | None = None, log: bool = True, until: int | None = None) -> tuple[VAE, list[dict]]:
    """Run (or resume) the proVAE training of ``cfg`` in ``out_dir`` (locked for the call, as
    :func:`certkit.train.loop.train`; ``until``: stop after that epoch); returns (model, history rows)."""
    with checkpoint.run_directory(out_dir) as out:
        return _train_vae(cfg, out, resume, progress, train_set, log, until)


def _train_vae(cfg: VAEConfig, out: Path, resume: bool, progress: bool, train_set: Dataset | None,
               log: bool, until: int | None = None) -> tuple[VAE, list[dict]]:
    device = torch.device(cfg.device)
    data = train_set or load_dataset(cfg.data, "train", cfg.data_dir)
    if cfg.train_n:
        data = data.subset(0, cfg.train_n)
    torch.manual_seed(cfg.seed)
    vae = VAE(data.shape, cfg.latent, cfg.hidden, cfg.sigma0).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    config = asdict(cfg)
    start = checkpoint.restore(out, config, vae, opt, resume)
    history = ResultsWriter(out / "history.jsonl", key="epoch")
    steps = math.ceil(len(data) / cfg.batch_size)
    ramp = eps_ramp(cfg)
    with history:  # the file's lock is released when the loop ends, whatever happens
        for epoch in range(start, cfg.epochs if until is None else min(until, cfg.epochs)):
            t0 = time.time()
            vae.train()
            perm = checkpoint.epoch_order(len(data), cfg.seed, epoch)
            tot_bound = 0.0
            for b in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
                x = data.x[perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]].to(device)
                eps = ramp(epoch + b / steps)
                nu = torch.randn(x.shape[0], cfg.latent, device=device)
                bound = vae.elbo_bound(x, eps, nu) if eps > 0 else vae.elbo(x, nu)
                loss = -bound.mean() / math.prod(data.shape)  # per pixel: a step size independent of the image size
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_bound += bound.detach().mean().item()
            row = {"epoch": epoch + 1, "train_bound": tot_bound / steps, "eps": ramp(epoch + 1),
                   "time_s": round(time.time() - t0, 1)}
            checkpoint.end_epoch(out, epoch + 1, config, vae, opt, _arch(cfg, data.shape), history, row)
            if log:
                print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return vae.eval(), history.results


@torch.no_grad()
def evaluate_vae(vae: VAE, x: torch.Tensor, eps_bound: float, attack_eps: list[float], draws: int = 8,
                 attack_steps: int = 20, batch_size: int = 200, seed: int = 0, crown: bool = False) -> dict:
    """Mean ELBO, certified bound at ``eps_bound`` (IBP, and with ``crown`` also CROWN's: ``bound_crown``) and
    ELBO under PGD at each attack radius (all averaged over ``draws`` reparameterisation draws, per input, then
    over inputs); per pixel values are these / d."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"elbo": 0.0, "bound": 0.0, **({"bound_crown": 0.0} if crown else {}),
            **{f"pgd@{e}": 0.0 for e in attack_eps}}
    n = len(x)
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        B = len(xb)
        nus = [torch.randn(B, vae.latent, generator=gen).to(xb) for _ in range(draws)]
        sums["elbo"] += sum(vae.elbo(xb, nu).sum().item() for nu in nus) / draws
        stacked = torch.stack(nus)  # every draw in one bound computation
        sums["bound"] += vae.elbo_bound(xb, eps_bound, stacked).sum().item() / draws
        if crown:
            sums["bound_crown"] += vae.elbo_bound(xb, eps_bound, stacked, "crown").sum().item() / draws
        for e in attack_eps:
            with torch.enable_grad():
                xa = elbo_attack(vae, xb, e, attack_steps, samples=4, generator=gen)
            sums[f"pgd@{e}"] += sum(vae.elbo(xa, nu).sum().item() for nu in nus) / draws
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def save_images(vae: VAE, x: torch.Tensor, eps: float, path: str | os.PathLike, seed: int = 0) -> Path:
    """One PNG: inputs, their reconstructions, PGD-attacked inputs (radius eps) and their reconstructions, and
    samples from the prior (the paper's Fig. 1, 2, 4 in one sheet)."""
    from certkit.errors import require

    matplotlib = require("matplotlib", "plot", "the image sheet")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        xa = elbo_attack(vae, x, eps, 20, samples=4, generator=gen)
    prior = vae.decoder(torch.randn(len(x), vae.latent, generator=gen).to(x))
    rows = [("input", x), ("reconstruction", vae(x)), (f"attacked (ε={eps})", xa), ("its reconstruction", vae(xa)),
            ("prior samples", prior)]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(len(x) * 0.8, len(rows) * 0.9))
    for r, (name, imgs) in enumerate(rows):
        for c in range(len(x)):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=6, rotation=0, ha="right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
