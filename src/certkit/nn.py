"""Small modules that certkit models are built from, besides torch.nn's own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel. Keeping normalisation inside the model keeps radii in pixel space."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std differ in length: {mean_t.numel()} vs {std_t.numel()}")
        if not (torch.isfinite(std_t).all() and torch.isfinite(mean_t).all()) or (std_t <= 0).any():
            raise ValueError(f"Normalize needs finite mean and positive finite std, got mean={mean_t.tolist()}, "
                             f"std={std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel with ``y = scale·x + shift``."""
        scale = 1.0 / self.std
        return scale, -self.mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (identity shortcut when none is given): the residual block of a ResNet."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)
