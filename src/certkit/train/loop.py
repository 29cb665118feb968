"""One training loop for every objective: epochs, lr schedule, evaluation and checkpoint each epoch, resume.

A run directory holds ``model.safetensors`` (the latest weights with metadata), ``train_state.pt`` and
``history.jsonl`` (one row per epoch); a killed run restarts from its last finished epoch
(:mod:`certkit.train.checkpoint`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from certkit import graph as g
from certkit.data import Dataset, load_dataset
from certkit.io import ResultsWriter
from certkit.models import build
from certkit.train import checkpoint
from certkit.train.batches import LabeledBatches, MixedBatches, pseudo_labels, split_pool
from certkit.train.config import TrainConfig, upgrade_config
from certkit.train.objectives import Objective, build_objective
from certkit.verify import certify


def lr_at(cfg: TrainConfig, objective: Objective, epoch_float: float) -> float:
    """The objective's own schedule if it has one, else ``lr`` decayed by ``lr_gamma`` at ``lr_milestones``."""
    own = objective.lr_at(epoch_float)
    return own if own is not None else cfg.lr * cfg.lr_gamma ** sum(epoch_float >= m for m in cfg.lr_milestones)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over the weights of the affine layers (not biases, not normalisation)."""
    graph = g.to_graph(model)
    ws = [n.op.weight for n in graph.nodes
          if isinstance(n.op, g.AffineOp) and not isinstance(n.op, g.ElementwiseAffine)]
    return sum(w.abs().sum() for w in ws)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, eps: float, norm: str = "inf", batch_size: int = 500,
             method: str = "ibp") -> dict[str, float]:
    """Clean and certified accuracy of ``model`` on ``data``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = certified = 0
    for i in range(0, len(data), batch_size):
        x, y = data.x[i:i + batch_size].to(device), data.y[i:i + batch_size].to(device)
        c = certify(model, x, y, eps, method, norm)
        correct += c.correct.sum().item()
        certified += c.certified.sum().item()
    model.train(was_training)
    return {"clean_acc": correct / len(data), "cert_acc": certified / len(data)}


def _arch_meta(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    mean, std = (list(data.mean), list(data.std)) if cfg.normalize else (None, None)
    return {"name": cfg.arch, "in_shape": list(data.shape), "num_classes": data.num_classes,
            "mean": mean, "std": std, "kwargs": cfg.arch_kwargs}


def _load_init(model: nn.Module, path: str, arch: dict[str, Any]) -> None:
    """Start from the weights of the checkpoint at ``path``, which must have been made for the same architecture
    (name, input shape, classes, arguments, a Normalize layer or none). A checkpoint trained on another data set
    (pre-training) may have other normalisation statistics: its weights are loaded, the Normalize layer keeps
    this run's data's."""
    from certkit.io import CheckpointError, load_model

    init, meta = load_model(path)
    theirs = meta.get("arch") or {}

    def differs(k: str) -> bool:
        a, b = theirs.get(k), arch.get(k)
        if k in ("mean", "std") and a is not None and b is not None:
            return len(a) != len(b)  # statistics of another data set: fine, the layer is this run's
        return _jsonish(a) != _jsonish(b)

    diff = [k for k in ("name", "in_shape", "num_classes", "mean", "std", "kwargs") if differs(k)]
    if diff:
        raise CheckpointError(f"init checkpoint {path} was made for another architecture: "
                              + ", ".join(f"{k} {theirs.get(k)!r} != {arch.get(k)!r}" for k in diff))
    from certkit.nn import Normalize

    keep = {f"{name}.{b}": getattr(m, b) for name, m in model.named_modules() if isinstance(m, Normalize)
            for b in ("mean", "std")}
    model.load_state_dict({**init.state_dict(), **keep})


def _jsonish(v: Any) -> Any:
    """Compare metadata as JSON stores it (tuples are lists, floats rounded as float32 data statistics)."""
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonish(x) for k, x in v.items()}
    return round(v, 6) if isinstance(v, float) else v


def training_batches(cfg: TrainConfig, train_set: Dataset, out: Path,
                     device: torch.device) -> LabeledBatches | MixedBatches:
    """The run's batches: the training set's, or, when [self_training] names a teacher, the mix of labeled and
    pseudo-labelled pool images (the pseudo-labels kept in ``out/pseudo_labels.safetensors``)."""
    st = cfg.self_training
    st.check()
    if not st.teacher:
        return LabeledBatches(train_set, cfg.batch_size, cfg.seed)
    labeled, pool_x = split_pool(train_set, st.labeled_n, st.pool_n)
    pseudo = pseudo_labels(st.teacher, pool_x, train_set.num_classes, device, out / "pseudo_labels.safetensors")
    return MixedBatches(labeled, pool_x, pseudo, cfg.batch_size, st.unlabeled_fraction, cfg.seed)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
          train_set: Dataset | None = None, test_set: Dataset | None = None,
          log: bool = True, until: int | None = None) -> tuple[nn.Module, list[dict]]:
    """Run (or resume) the training described by ``cfg`` in ``out_dir``; returns (model, history rows).

    ``resume=False`` discards an earlier run in ``out_dir``; ``progress`` shows a bar per epoch; ``log`` prints
    one line per epoch; ``until``: stop after that epoch (a time-boxed part of a run that resumes later). The
    directory is locked for the call (``run.lock``): a second run in it raises :class:`certkit.io.InUseError`."""
    with checkpoint.run_directory(out_dir) as out:
        return _train(cfg, out, resume, progress, train_set, test_set, log, until)


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, train_set: Dataset | None,
           test_set: Dataset | None, log: bool, until: int | None) -> tuple[nn.Module, list[dict]]:
    device = torch.device(cfg.device)
    train_set = train_set or load_dataset(cfg.data, "train", cfg.data_dir)
    test_set = test_set or load_dataset(cfg.data, "test", cfg.data_dir)
    if cfg.train_n:
        train_set = train_set.subset(0, cfg.train_n)
    torch.manual_seed(cfg.seed)
    meta = _arch_meta(cfg, train_set)
    model = build(cfg.arch, train_set.shape, train_set.num_classes, meta["mean"], meta["std"],
                  **cfg.arch_kwargs).to(device)
    if cfg.init:
        _load_init(model, cfg.init, meta)
    batches = training_batches(cfg, train_set, out, device)
    steps_per_epoch = batches.steps_per_epoch
    objective = build_objective(cfg, steps_per_epoch, train_set.num_classes, model)
    if not cfg.init:
        objective.prepare(model)
    if objective.channels_last and len(train_set.shape) == 3:
        model = model.to(memory_format=torch.channels_last)  # plain forward passes: ~1.6x faster convolutions on CPU
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")

    config = cfg.to_dict()
    start_epoch = checkpoint.restore(out, config, model, opt, resume, upgrade_config)
    history = ResultsWriter(out / "history.jsonl", key="epoch")

    eval_set = test_set.subset(0, cfg.eval_n)
    with history:  # the file's lock is released when the loop ends, whatever happens
        for epoch in range(start_epoch, cfg.epochs if until is None else min(until, cfg.epochs)):
            t0 = time.time()
            model.train()
            sums: dict[str, float | torch.Tensor] = {}
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       leave=False)
            for b in bar:
                step = epoch * steps_per_epoch + b
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, objective, step / steps_per_epoch)
                x, y = (t.to(device) for t in batches(epoch, b))
                loss, metrics = objective(model, x, y, step)
                if cfg.l1 > 0:
                    loss = loss + cfg.l1 * l1_penalty(model)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {b}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                for k, v in metrics.items():  # summed on the device; read once per epoch
                    sums[k] = sums.get(k, 0.0) + v
                if progress and b % 20 == 0:
                    bar.set_postfix({k: f"{float(v):.3f}" for k, v in metrics.items()})
            train_time = time.time() - t0
            ev = evaluate(model, eval_set, cfg.eval_eps, cfg.norm)
            row = {"epoch": epoch + 1, **{f"train_{k}": float(v) / steps_per_epoch for k, v in sums.items()},
                   "lr": lr_at(cfg, objective, epoch), f"test_clean_acc@{cfg.eval_n}": ev["clean_acc"],
                   f"test_ibp_acc@{cfg.eval_eps}": ev["cert_acc"], "train_time_s": round(train_time, 1),
                   "time_s": round(time.time() - t0, 1)}
            checkpoint.end_epoch(out, epoch + 1, config, model, opt, _arch_meta(cfg, train_set), history, row,
                                 metrics=row)
            objective.end_epoch(epoch, out)
            if log:
                print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"),
                    flush=True)
    model.eval()
    return model, history.results
