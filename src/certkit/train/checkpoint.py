"""Resumable runs, shared by every training loop (classifiers, COLT, smoothing, proVAEs).

A run directory holds ``train_state.pt`` (weights, optimizer and RNG state after the last finished epoch, with the
config that produced them; it loads with ``weights_only=True``), ``history.jsonl`` and ``model.safetensors``. The
batch order of an epoch is a function of (seed, epoch), so a killed run that restarts from its last finished epoch
ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE = "train_state.pt"
# where a run goes, where its data lives and how long it goes on do not change the epochs already done
FREE_KEYS = ("device", "data_dir", "epochs")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in FREE_KEYS}


def restore(out: Path, config: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
            resume: bool = True, upgrade: Callable[[dict], dict] | None = None) -> int:
    """Load the run in ``out`` into ``model``, ``opt`` and the global RNGs (CPU, and CUDA where the run had it);
    returns the number of finished epochs (0 for a new run). ``resume=False`` discards an earlier run instead. A
    run made with another config (other than :data:`FREE_KEYS`) is refused: its epochs would not be this config's.
    ``upgrade`` brings a config saved by an older version into today's form before they are compared."""
    path = out / STATE
    if not resume:
        for f in (path, out / "history.jsonl", out / "model.safetensors"):
            f.unlink(missing_ok=True)
        return 0
    if not path.exists():
        return 0
    # on the CPU: RNG states must stay CPU byte tensors; load_state_dict moves weights and optimizer state to the
    # model's device, so a run resumes on any device
    state = torch.load(path, weights_only=True, map_location="cpu")
    saved = json.loads(state["config"])
    old, new = _comparable(upgrade(saved) if upgrade else saved), _comparable(config)
    if old != new:
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ValueError(f"{out} holds a run with a different config ({', '.join(diff)} differ); "
                         "choose another output directory or start afresh")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    cuda_rng = state.get("cuda_rng", [])
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    return int(state["epoch"])


def save(out: Path, epoch: int, config: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Write the state after ``epoch`` finished epochs atomically (a kill mid-write keeps the previous one)."""
    tmp = out / (STATE + ".tmp")
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "config": json.dumps(config)}, tmp)
    os.replace(tmp, out / STATE)


@contextmanager
def run_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """The run directory, created if needed and locked while the block runs (``run.lock``): a second run in it
    raises :class:`certkit.io.InUseError` instead of writing the same files."""
    from certkit.io import hold_lock

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out / "run.lock") or nullcontext():  # the lock file closes (unlocks) on leaving
        yield out


def end_epoch(out: Path, epoch: int, config: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
              arch: dict[str, Any], history, row: dict[str, Any], **meta: Any) -> None:
    """After ``epoch`` finished epochs: the history row, ``model.safetensors`` (with ``arch``, the config and
    ``meta``) and the resumable state, in that order (a kill between them redoes at most this epoch)."""
    from certkit.io import save_model

    device = next(model.parameters()).device
    history.write([row])
    save_model(out / "model.safetensors", model.cpu(), arch, config=config, epoch=epoch, **meta)
    model.to(device)
    save(out, epoch, config, model, opt)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the n training examples used in ``epoch`` (the same after a resume)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
