"""Small modules that certkit models are built from, besides torch.nn's own."""

from __future__ import annotations

import copy
import itertools
import math
import weakref
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

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel with ``y = scale·x + shift``."""
        scale = 1.0 / self.std
        return scale, -self.mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Affine(nn.Module):
    """``x·scale + shift`` elementwise, with constants that broadcast against the batch (NumPy rules, as in
    ONNX; constants of one dimension act on the last axis) and not along the batch axis: an input normalisation
    given per feature or per pixel, e.g. ONNX ``Sub``/``Div`` by constant vectors."""

    def __init__(self, scale: torch.Tensor | float, shift: torch.Tensor | float):
        super().__init__()
        scale_t, shift_t = (torch.as_tensor(v) for v in (scale, shift))
        scale_t, shift_t = (v if v.is_floating_point() else v.float() for v in (scale_t, shift_t))
        if not (torch.isfinite(scale_t).all() and torch.isfinite(shift_t).all()):
            raise ValueError("Affine needs finite scale and shift")
        dim = max(scale_t.dim(), shift_t.dim(), 2)  # at least (1, n): a 1-D constant is not read per channel
        scale_t, shift_t = (t.reshape((1,) * (dim - t.dim()) + tuple(t.shape)) for t in (scale_t, shift_t))
        if scale_t.shape[0] != 1 or shift_t.shape[0] != 1:
            raise ValueError("Affine's constants must not vary along the batch axis")
        self.register_buffer("scale", scale_t)
        self.register_buffer("shift", shift_t)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Reindex(nn.Module):
    """A fixed rearrangement of the entries of each input: ``y.flatten(1) = x.flatten(1)[:, index]`` reshaped to
    ``(B, *shape)``. Built from any shape-only function (transpose, reshape, squeeze) by :meth:`of`."""

    def __init__(self, index: torch.Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).flatten())
        self.shape = tuple(int(v) for v in shape)
        if self.index.numel() != math.prod(self.shape):
            raise ValueError(f"index of {self.index.numel()} entries for an output of shape {self.shape}")

    @classmethod
    def of(cls, fn, in_shape: tuple[int, ...]) -> Reindex:
        """The rearrangement that ``fn`` (a shape-only function of a (1, *in_shape) tensor) performs."""
        n = math.prod(in_shape)
        out = fn(torch.arange(n, dtype=torch.float64).view(1, *in_shape))
        return cls(out.flatten().round().long(), tuple(out.shape[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, self.index].view(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (identity shortcut when none is given): the residual block of a ResNet."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


_FLOAT64: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode (where counterexamples and certificates are re-checked), made once
    and reused while the model is the same: same modules and settings (its ``repr``) and every parameter and
    buffer equal to the copy's (compared exactly, since float32 → float64 is exact; tensor versions are not
    enough, as ``p.data.mul_(2)`` does not bump them)."""
    hit = _FLOAT64.get(model)
    if hit is not None and hit[0] == repr(model):
        mine = list(itertools.chain(model.parameters(), model.buffers()))
        theirs = list(itertools.chain(hit[1].parameters(), hit[1].buffers()))
        same = all(a.shape == b.shape and a.device == b.device and torch.equal(a.to(b.dtype), b)
                   for a, b in zip(mine, theirs))
        if len(mine) == len(theirs) and same:
            return hit[1]
    copied = copy.deepcopy(model).double().eval()
    _FLOAT64[model] = (repr(model), copied)
    return copied
