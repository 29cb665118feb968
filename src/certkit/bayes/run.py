"""Bayesian runs from a config: inference with a chosen likelihood, then evaluation of the posterior predictive.

Config (TOML): ``[data] dataset, train_n``, ``[model] arch, kwargs``, ``[bayes] method (map | bbb | noisy-adam | vogn
| swag | hmc), likelihood (standard | pgd | ibp | crown: the worst case by CROWN-IBP), eps, lam, epochs,
batch_size, lr, prior_std, n_samples,
temperature, ramp_epochs, mix, curvature_batch, damping, map_epochs, map_lr, ...``. With ``map_epochs`` > 0 every
method starts from the MAP fit of the same likelihood (:func:`warm_start`). The robust likelihood's ε grows linearly
over the first ``ramp_epochs`` epochs (default 0: no ramp) — without it the worst-case probability collapses to ~0 early
and its gradient with it (measured: MAP 0% IBP-certified after 3 epochs with a 1-epoch ramp, 71% after 10 with 8).
The run directory holds ``posterior.safetensors`` (the weight samples: the certified
predictor), ``config.json`` and the evaluation ``eval.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from certkit.bayes import inference as inf
from certkit.bayes.certify import certify_posterior
from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik, standard_loglik
from certkit.data import load_dataset
from certkit.io import read_dataclass
from certkit.models import build

METHODS = {"map", "bbb", "noisy-adam", "vogn", "swag", "hmc"}


@dataclass
class BayesConfig:
    """A Bayesian run (module docstring): [data], [model] and the [bayes] section's inference settings."""

    name: str = "bayes"
    data: str = "mnist"
    train_n: int | None = None
    arch: str = "mlp"
    kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "bbb"
    likelihood: str = "ibp"
    eps: float = 0.1
    lam: float = 0.25
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    prior_std: float = 1.0
    n_samples: int = 10
    temperature: float = 1.0
    swa_start: float | None = None
    rank: int = 10
    burn_in: int = 10
    leapfrog: int = 10
    step_size: float = 1e-3
    pgd_steps: int = 10
    seed: int = 0
    map_epochs: int = 0
    map_lr: float = 1e-3
    map_finish_epochs: int = 0
    map_finish_lr: float = 1e-4
    hmc_batch: int = 10000
    mass: float | None = None
    ramp_epochs: float = 0
    mix: str = "prob"
    curvature_batch: int | None = None
    damping: float = 0.0




def read_config(raw: dict) -> dict:
    """The run's settings from a TOML dict, by the one config reader (unknown keys and wrong types are errors that
    name the key as written), as a plain dict."""
    cfg, _ = read_dataclass(BayesConfig, raw, {"data": {"dataset": "data", "train_n": "train_n"},
                                               "model": {"arch": "arch", "kwargs": "kwargs"}}, flat=("bayes",))
    cfg = asdict(cfg)
    if cfg["method"] not in METHODS:
        raise ValueError(f"unknown method {cfg['method']!r}; use one of {', '.join(sorted(METHODS))}")
    if cfg["likelihood"] not in ("standard", "pgd", "ibp", "crown"):
        raise ValueError("likelihood must be standard, pgd, ibp or crown")
    if cfg["mix"] not in ("prob", "log"):
        raise ValueError("mix must be prob or log")
    return cfg


def _warm_key(cfg: dict) -> str:
    keys = ("data", "train_n", "arch", "kwargs", "likelihood", "eps", "lam", "mix", "pgd_steps", "ramp_epochs",
            "map_epochs", "map_lr", "batch_size", "prior_std", "seed", "map_finish_epochs", "map_finish_lr")
    blob = json.dumps({k: cfg[k] for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warm_start(cfg: dict, model: nn.Module, x, y, ll, cache_dir: Path | None) -> inf.Params | None:
    """The MAP solution of the same likelihood (``map_epochs`` of Adam at ``map_lr``, ε ramped over
    ``ramp_epochs``, then ``map_finish_epochs`` at ``map_finish_lr`` and the full ε) that every method starts
    from (Wicker et al. start robust HMC from an SGD solution; SWAG starts from a trained network by design).
    Cached in ``cache_dir`` under a hash of what determines it, so the
    five methods of one likelihood share one MAP fit."""
    if cfg["map_epochs"] <= 0:
        return None
    path = cache_dir / f"map-{_warm_key(cfg)}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        from safetensors.torch import load_file

        return load_file(str(path), device=str(x.device))
    params = inf.fit_map(model, x, y, ll, cfg["map_epochs"], cfg["batch_size"], cfg["map_lr"],
                         prior_std=cfg["prior_std"], seed=cfg["seed"])
    if cfg["map_finish_epochs"] > 0:
        if hasattr(ll, "set_epoch"):
            ll.ramp_epochs = 0  # the finish runs at the full ε
        params = inf.fit_map(model, x, y, ll, cfg["map_finish_epochs"], cfg["batch_size"], cfg["map_finish_lr"],
                             prior_std=cfg["prior_std"], init=params, seed=cfg["seed"] + 1)
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp))
        tmp.replace(path)
    return params


def run_inference(cfg: dict, data_dir=None, cache_dir: Path | None = None,
                  device: str = "cpu") -> tuple[nn.Module, inf.Posterior, float]:
    data = load_dataset(cfg["data"], "train", data_dir)
    if cfg["train_n"]:
        data = data.subset(0, cfg["train_n"])
    torch.manual_seed(cfg["seed"])
    model = build(cfg["arch"], data.shape, data.num_classes, data.mean, data.std, **cfg["kwargs"]).eval().to(device)
    robust = None if cfg["likelihood"] == "standard" else partial(
        robust_loglik, lam=cfg["lam"], worst=cfg["likelihood"], num_classes=data.num_classes,
        pgd_steps=cfg["pgd_steps"], mix=cfg["mix"])
    x, y = data.x.to(device), data.y.to(device)
    t0 = time.time()
    steps = cfg["pgd_steps"] if cfg["likelihood"] == "pgd" else None
    init = warm_start(cfg, model, x, y, robust and ScheduledLoglik(robust, cfg["eps"], cfg["ramp_epochs"], steps)
                      or standard_loglik, cache_dir)
    # after a warm start the method itself runs at the full ε; without one, ε ramps inside the method
    ll = standard_loglik if robust is None else ScheduledLoglik(
        robust, cfg["eps"], 0 if init is not None else cfg["ramp_epochs"], steps)
    common = dict(prior_std=cfg["prior_std"], init=init, seed=cfg["seed"])
    m = cfg["method"]
    if m == "map":
        post = inf.Posterior(model, [inf.fit_map(model, x, y, ll, cfg["epochs"], cfg["batch_size"], cfg["lr"],
                                                 **common)], "map")
    elif m == "bbb":
        post = inf.bayes_by_backprop(model, x, y, ll, cfg["epochs"], cfg["batch_size"], cfg["lr"],
                                     n_samples=cfg["n_samples"], temperature=cfg["temperature"], **common)
    elif m == "noisy-adam":
        post = inf.noisy_adam(model, x, y, ll, cfg["epochs"], cfg["batch_size"], cfg["lr"],
                              n_samples=cfg["n_samples"], temperature=cfg["temperature"],
                              curvature_batch=cfg["curvature_batch"], damping=cfg["damping"], **common)
    elif m == "vogn":
        post = inf.vogn(model, x, y, ll, cfg["epochs"], cfg["batch_size"], cfg["lr"], n_samples=cfg["n_samples"],
                        temperature=cfg["temperature"], curvature_batch=cfg["curvature_batch"],
                        damping=cfg["damping"], **common)
    elif m == "swag":
        start = cfg["swa_start"] if cfg["swa_start"] is not None else cfg["epochs"] // 2
        post = inf.swag(model, x, y, ll, cfg["epochs"], start, cfg["batch_size"], cfg["lr"], rank=cfg["rank"],
                        n_samples=cfg["n_samples"], **common)
    else:
        post = inf.hmc(model, x, y, ll, cfg["n_samples"], cfg["burn_in"], cfg["leapfrog"], cfg["step_size"],
                       batch_size=cfg["hmc_batch"], mass=cfg["mass"], **common)
    cfg["arch_meta"] = {"in_shape": list(data.shape), "num_classes": data.num_classes, "mean": list(data.mean),
                        "std": list(data.std)}
    return model, post, time.time() - t0


class Predictive(nn.Module):
    """The posterior predictive as one network: log of the mean softmax over the weight samples (what PGD
    attacks)."""

    def __init__(self, model: nn.Module, samples: list[dict[str, torch.Tensor]]):
        super().__init__()
        self.model, self.samples = model, samples

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        return torch.log(torch.stack([torch.softmax(functional_call(self.model, s, (z,)), 1)
                                      for s in self.samples]).mean(0).clamp_min(1e-30))


@torch.no_grad()
def evaluate(model, post: inf.Posterior, x, y, eps: float, methods=("ibp", "crown"), pgd_steps: int = 20,
             batch_size: int = 100, executor=None, progress: bool = False) -> dict:
    """Accuracy, PGD accuracy of the predictive (true label, projected every step, EOT over the samples), and
    IBP-/LBP-certified accuracy: ``<method>_certified`` with the pairwise rule, ``<method>_theorem1_certified``
    with the paper's Theorem 1 (same bounds). Batches of ``batch_size`` inputs are the tasks of ``executor``
    (:class:`~certkit.parallel.Executor`; in this process by default)."""
    from certkit.parallel import Executor, shards

    executor = executor or Executor()
    device = str(x.device)
    shared = {"model": model, "samples": post.samples, "x": x, "y": y}
    if executor.distributed:  # the network and the samples travel on the CPU
        shared = {"model": copy.deepcopy(model).cpu(), "samples": [{k: v.cpu() for k, v in s.items()}
                                                                     for s in post.samples],
                  "x": x.cpu(), "y": y.cpu()}
    from tqdm import tqdm

    n = len(y)
    total: dict[str, int] = {}
    bar = tqdm(total=n, desc="certify posterior", unit="input", disable=not progress)
    for shard, counts in executor.map(evaluate_shard, shared, shards(range(n), batch_size, eps=eps, methods=methods,
                                                                      pgd_steps=pgd_steps, device=device)):
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        bar.update(len(shard.items))
    bar.close()
    out = {"n": n, "eps": eps, "accuracy": total["accuracy"] / n, "pgd_accuracy": total["pgd_accuracy"] / n,
           "posterior_std": posterior_std(post)}
    out.update({f"{m}_certified": total[m] / n for m in [k for m in methods for k in (m, f"{m}_theorem1")]})
    return out


@torch.no_grad()
def evaluate_shard(shared: dict, items: list[int], eps: float, methods, pgd_steps: int, device: str) -> dict:
    """The counts of :func:`evaluate` on the inputs at positions ``items`` (its task function)."""
    from certkit.attacks.pgd import pgd
    from certkit.parallel import seeded

    if next(shared["model"].parameters()).device != torch.device(device):
        shared["model"] = shared["model"].to(device)
        shared["samples"] = [{k: v.to(device) for k, v in s.items()} for s in shared["samples"]]
    model, samples = shared["model"], shared["samples"]
    sel = torch.tensor(items)
    xb, yb = shared["x"][sel].to(device), shared["y"][sel].to(device)
    net = Predictive(model, samples)
    counts = {"accuracy": int((net(xb).argmax(1) == yb).sum())}
    with torch.enable_grad(), seeded("bayes-eval", items):  # PGD's random starts: the same in any process
        counts["pgd_accuracy"] = int((~pgd(net, xb, yb, eps, "inf", pgd_steps).success).sum())
    for m in methods:
        c = certify_posterior(model, samples, xb, yb, eps, m)
        counts[m] = int(c.certified.sum())
        counts[f"{m}_theorem1"] = int((c.theorem1_margin > 0).sum())
    return counts


def posterior_std(post: inf.Posterior) -> float:
    """Median over all weights of the standard deviation across the saved samples: the posterior's width, which
    the certificate pays for (0 for a single sample)."""
    if len(post.samples) < 2:
        return 0.0
    return float(torch.cat([torch.stack([s[k] for s in post.samples]).std(0).flatten()
                            for k in post.samples[0]]).median())


def predictive_entropy(post: inf.Posterior, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    ps = torch.cat([post.predictive(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return -(ps * ps.clamp_min(1e-30).log()).sum(1)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve for telling out-of-distribution inputs (higher entropy) from in-distribution: the
    probability that an out-of-distribution score exceeds an in-distribution one, ties counting half
    (Mann–Whitney U over the midranks)."""
    from scipy.stats import rankdata

    a, b = in_scores.double().cpu().numpy(), out_scores.double().cpu().numpy()
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def save_run(out: Path, cfg: dict, post: inf.Posterior, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    post.save(out / "posterior.safetensors")
    scalars = {k: v for k, v in post.info.items() if isinstance(v, (int, float))}  # e.g. HMC's accept rate
    (out / "config.json").write_text(json.dumps({**cfg, "train_seconds": round(seconds, 1), "info": scalars},
                                                indent=1))


def load_run(out: Path, device: str = "cpu") -> tuple[nn.Module, inf.Posterior, dict]:
    """The network, posterior and config of a run directory written by :func:`save_run`."""
    from certkit.io import CheckpointError

    missing = [f for f in ("config.json", "posterior.safetensors") if not (Path(out) / f).exists()]
    if missing:
        raise CheckpointError(f"{out} is not a finished Bayes run (no {' or '.join(missing)}); make one with "
                              f"certkit bayes train --config NAME --out {out}")
    try:
        cfg = json.loads((Path(out) / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{Path(out) / 'config.json'} is corrupt ({e})") from None
    a = cfg["arch_meta"]
    model = build(cfg["arch"], a["in_shape"], a["num_classes"], a["mean"], a["std"], **cfg["kwargs"]).eval()
    post = inf.Posterior.load(Path(out) / "posterior.safetensors", model.to(device))
    post.samples = [{k: v.to(device) for k, v in s.items()} for s in post.samples]
    return model, post, cfg
