"""Where each training batch comes from: the labeled training set in a seeded order per epoch, or, for
self-training (Carmon et al. 2019, "Unlabeled data improves adversarial robustness"; the semi-supervised rows of
SmoothAdv, Salman et al. 2019, Sec. 4.2), a fixed mix of labeled images and images of an unlabeled pool with a
teacher's pseudo-labels.

The pool is held as images only: its true labels are dropped where it is split off (:func:`split_pool`), so no
step of a self-training run can read them. Both sources draw their order from ``(seed, epoch)``, so a resumed run
sees the batches an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from certkit.data import Dataset
from certkit.errors import ConfigError
from certkit.train.checkpoint import epoch_order


@dataclass
class SelfTrainingConfig:
    """The [self_training] section: the first ``labeled_n`` training images keep their labels, the rest (at most
    ``pool_n`` of them) form the unlabeled pool, pseudo-labelled by the ``teacher`` checkpoint's clean prediction;
    ``unlabeled_fraction`` of every batch comes from the pool. No teacher: plain supervised training."""

    teacher: str | None = None
    labeled_n: int | None = None
    pool_n: int | None = None
    unlabeled_fraction: float = 0.5

    def check(self) -> None:
        if self.teacher is None:
            if self.labeled_n is not None or self.pool_n is not None:
                raise ConfigError("[self_training] labeled_n and pool_n need a teacher (a checkpoint that labels "
                                  "the pool)")
            return
        if self.labeled_n is None or self.labeled_n <= 0:
            raise ConfigError("[self_training] needs labeled_n > 0: the first labeled_n training images keep their "
                              "labels, the rest is the unlabeled pool")
        if self.pool_n is not None and self.pool_n <= 0:
            raise ConfigError(f"[self_training] pool_n must be positive, got {self.pool_n}")
        if not 0 < self.unlabeled_fraction < 1:
            raise ConfigError(f"[self_training] unlabeled_fraction must be in (0, 1), got {self.unlabeled_fraction}")


class LabeledBatches:
    """Batches of the labeled set, in the order :func:`epoch_order` gives each epoch."""

    def __init__(self, data: Dataset, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.steps_per_epoch = math.ceil(len(data) / batch_size)
        self._order: tuple[int, torch.Tensor] | None = None

    def __call__(self, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.data), self.seed, epoch))
        idx = self._order[1][b * self.batch_size:(b + 1) * self.batch_size]
        return self.data.x[idx], self.data.y[idx]


class MixedBatches:
    """Self-training batches: ``batch_size - k`` labeled images and ``k = round(fraction · batch_size)`` pool
    images with their pseudo-labels, labeled ones first. An epoch is one pass over the labeled set; the pool is
    walked in its own seeded order per epoch (repeated when an epoch needs more of it than it holds). The last
    batch of an epoch, when the labeled set runs short, takes as many pool images as keep the ratio."""

    def __init__(self, labeled: Dataset, pool_x: torch.Tensor, pseudo: torch.Tensor, batch_size: int,
                 fraction: float, seed: int):
        if len(pool_x) != len(pseudo) or len(pool_x) == 0:
            raise ValueError(f"the pool needs one pseudo-label per image ({len(pool_x)} images, {len(pseudo)} labels)")
        self.labeled, self.pool_x, self.pseudo, self.seed = labeled, pool_x, pseudo, seed
        self.k_pool = round(fraction * batch_size)
        self.k_labeled = batch_size - self.k_pool
        if self.k_pool == 0 or self.k_labeled == 0:
            raise ConfigError(f"unlabeled_fraction {fraction} of a batch of {batch_size} leaves no "
                              f"{'pool' if self.k_pool == 0 else 'labeled'} image in it")
        self.steps_per_epoch = math.ceil(len(labeled) / self.k_labeled)
        self._order: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _orders(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None or self._order[0] != epoch:
            labeled = epoch_order(len(self.labeled), self.seed, epoch)
            need, n = self.steps_per_epoch * self.k_pool, len(self.pool_x)
            # the pool's own stream: epochs 10^6 + e of the same seed never meet the labeled set's epochs
            pool = torch.cat([epoch_order(n, self.seed, 1_000_000 + epoch * 1000 + r)
                              for r in range(math.ceil(need / n))])
            self._order = (epoch, labeled, pool)
        return self._order[1], self._order[2]

    def __call__(self, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        labeled, pool = self._orders(epoch)
        li = labeled[b * self.k_labeled:(b + 1) * self.k_labeled]
        k = self.k_pool if len(li) == self.k_labeled else max(1, round(len(li) * self.k_pool / self.k_labeled))
        pi = pool[b * self.k_pool:b * self.k_pool + k]
        return (torch.cat([self.labeled.x[li], self.pool_x[pi]]),
                torch.cat([self.labeled.y[li], self.pseudo[pi]]))


def split_pool(train_set: Dataset, labeled_n: int, pool_n: int | None) -> tuple[Dataset, torch.Tensor]:
    """(the labeled set: the first ``labeled_n`` images, the pool's images: up to ``pool_n`` of the rest). The
    pool's labels are not returned."""
    if labeled_n >= len(train_set):
        raise ConfigError(f"[self_training] labeled_n = {labeled_n} leaves no unlabeled pool in a training set of "
                          f"{len(train_set)} images")
    stop = None if pool_n is None else labeled_n + pool_n
    return train_set.subset(0, labeled_n), train_set.x[labeled_n:stop].clone()


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def pseudo_labels(teacher: str | Path, pool_x: torch.Tensor, num_classes: int, device: torch.device | str = "cpu",
                  cache: Path | None = None, batch_size: int = 1000) -> torch.Tensor:
    """The teacher checkpoint's predicted class for every pool image (clean inputs, eval mode). With ``cache`` (a
    run directory's file), labels computed once are reused while the teacher file and the pool are unchanged, so
    a resumed run trains on the labels it started with."""
    from certkit.io import CheckpointError, load_model

    model, meta = load_model(teacher)
    arch = meta.get("arch") or {}
    if arch.get("num_classes") not in (None, num_classes) or (
            arch.get("in_shape") is not None and tuple(arch["in_shape"]) != tuple(pool_x.shape[1:])):
        raise CheckpointError(f"teacher {teacher} was made for inputs {arch.get('in_shape')} and "
                              f"{arch.get('num_classes')} classes; the pool has {tuple(pool_x.shape[1:])} and "
                              f"{num_classes}")
    pool_digest = hashlib.sha256(pool_x.contiguous().numpy().tobytes()).hexdigest()
    key = {"teacher_sha256": _sha256(teacher), "pool_sha256": pool_digest}
    if cache is not None and cache.exists():
        with safe_open(cache, "pt") as f:
            if f.metadata() == key:
                return f.get_tensor("labels")
    model = model.to(device).eval()
    labels = torch.cat([model(pool_x[i:i + batch_size].to(device)).argmax(1).cpu()
                        for i in range(0, len(pool_x), batch_size)])
    if cache is not None:
        tmp = cache.with_suffix(".tmp")
        save_file({"labels": labels.contiguous()}, tmp, metadata=key)
        tmp.replace(cache)  # a killed run leaves the old file or none, never half of one
    return labels
