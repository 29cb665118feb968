"""Random draws on the device that uses them.

Without a generator the draw happens on ``device`` directly (no host-side generation and copy in GPU hot paths such
as COLT's Cauchy projections or smoothing noise). With a generator it happens where the generator lives and is
moved: a seeded CPU generator gives the same numbers whichever device runs the model.
"""

from __future__ import annotations

import torch


def _where(generator: torch.Generator | None, device) -> torch.device:
    return torch.device(device) if generator is None else generator.device


def uniform(shape, generator: torch.Generator | None = None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """U[0, 1) draws of ``shape`` on ``device``."""
    return torch.rand(shape, generator=generator, dtype=dtype, device=_where(generator, device)).to(device)


def normal(shape, generator: torch.Generator | None = None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """N(0, 1) draws of ``shape`` on ``device``."""
    return torch.randn(shape, generator=generator, dtype=dtype, device=_where(generator, device)).to(device)
