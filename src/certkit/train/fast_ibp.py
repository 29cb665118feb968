"""IBP done well (Shi et al. 2021, "Fast certified robust training with short warmup"): an initialisation that keeps
interval widths from growing layer by layer, and warm-up regularisers for bound tightness and ReLU balance,
weighted by λ·(1 − ε_t/ε) while ε ramps up (``[certified] ibp_init`` and ``warmup_reg``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from certkit import graph as g
from certkit.bounds.interval import Bounds


def ibp_init(model: nn.Module) -> None:
    """Shi et al. 2021 (§3.1), IBP initialisation: every Linear/Conv weight but the last layer's drawn from
    N(0, σ²) with σ = √(2π)/fan_in, so that an interval's expected width is kept, not blown up, from layer to layer
    at initialisation (the default initialisations grow it by ~√fan_in per layer). Biases are kept."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for m in layers[:-1]:
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)


def warmup_regularizer(model: nn.Module, nodes: list[Bounds], input_width: float, tol: float = 0.5) -> torch.Tensor:
    """Shi et al. 2021 (§3.3, eqs. 5–6), from the IBP bounds of every node: per ReLU layer, the tightness term
    relu(τ − w₀/w)/τ (w: the pre-activations' mean interval half-width, w₀ the input's) and the balance term
    (relu(τ − ρ_mean) + relu(τ − ρ_var))/τ, where ρ compares the mean and the spread of the interval centres of
    the active and the inactive neurons (each ratio symmetrised as min(ρ, 1/ρ)); the mean over layers."""
    graph = g.to_graph(model)
    terms = []
    for node in graph.nodes:
        if not isinstance(node.op, g.ReLU):
            continue
        b = nodes[node.inputs[0]]
        centre, half = (b.upper + b.lower) / 2, (b.upper - b.lower) / 2
        tight = F.relu(tol - input_width / half.mean().clamp_min(1e-12)) / tol
        act, inact = (b.lower > 0).to(centre.dtype), (b.upper < 0).to(centre.dtype)
        spread = (centre - centre.mean()) ** 2
        rho_mean = (centre * act).mean() / (-(centre * inact).mean()).clamp_min(1e-12)
        rho_var = (spread * act).sum() / (spread * inact).sum().clamp_min(1e-12)
        balance = torch.zeros((), dtype=centre.dtype, device=centre.device)
        for rho in (rho_mean, rho_var):  # a layer without active or inactive neurons adds nothing (no device sync)
            rho = torch.minimum(rho, 1 / rho.clamp_min(1e-12))
            balance = balance + torch.where(torch.isfinite(rho), F.relu(tol - rho) / tol, torch.zeros_like(rho))
        terms.append(tight + balance)
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()
