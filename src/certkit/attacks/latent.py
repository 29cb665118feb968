"""Latent adversarial attacks (COLT, Balunović & Vechev 2020): attacks inside the convex relaxation of the
region after a hidden layer, and the accuracy under such attacks per layer (their Fig. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from certkit import graph as g
from certkit.attacks.pgd import pgd
from certkit.bounds.zonotope import Zonotope, cauchy_bounds, latent_point, latent_terms
from certkit.specs import LinfBall


def latent_layers(model: nn.Module, which: list[int] | None = None) -> list[int]:
    """Graph indices of the ReLU outputs used as latent layers (``which``: 1-based ReLU ordinals; default all)."""
    graph = g.to_graph(model)
    relus = [i for i, n in enumerate(graph.nodes) if isinstance(n.op, g.ReLU)]
    if which is None:
        return relus
    bad = [k for k in which if not 1 <= k <= len(relus)]
    if bad:
        raise ValueError(f"latent layers {bad} out of range: the model has {len(relus)} ReLU layers")
    return [relus[k - 1] for k in which]


def latent_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, node: int, steps: int = 10,
                  step_size: float = 0.25, projections: int = 50, bounds=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A latent adversarial point in the convex region after graph node ``node`` (a ReLU output), found by
    projected signed-gradient ascent of the cross-entropy in e-space from a random start. Returns it detached."""
    graph = g.to_graph(model)
    s = LinfBall(x, eps)
    if bounds is None:
        with torch.no_grad():
            bounds = cauchy_bounds(graph, s, projections, generator, return_all=True, stop=node)
    e = latent_terms(graph, s, node, generator)
    for _ in range(steps):
        for t in e:
            t.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(graph.forward_from(node, latent_point(graph, s, bounds, e, node)), y,
                                   reduction="sum")
            grads = torch.autograd.grad(loss, e)
        e = [Zonotope.project(t.detach() + step_size * gr.sign()) for t, gr in zip(e, grads)]
    with torch.no_grad():
        return latent_point(graph, s, bounds, e, node)



@torch.no_grad()
def latent_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
                      step_size: float = 0.035, projections: int = 200, restarts: int = 1,
                      layers: list[int] | None = None, batch_size: int = 100) -> dict[str, float]:
    """COLT's Fig. 3: accuracy under attack in the input space (PGD) and in the latent region after every ReLU
    layer (e-space PGD from random starts, ``restarts`` times); a lower value in a layer means the convex
    relaxation there admits more adversarial points."""
    nodes = latent_layers(model, layers)
    out: dict[str, float] = {}
    n = len(y)
    ok = torch.zeros(n, dtype=torch.bool)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.enable_grad():
            ok[i:i + batch_size] = ~pgd(model, xb, yb, eps, "inf", steps, restarts=restarts).success.cpu()
    out["input"] = ok.float().mean().item()
    graph = g.to_graph(model)
    for k, node in enumerate(nodes, 1):
        ok = torch.zeros(n, dtype=torch.bool)
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            good = graph.forward(xb).argmax(1) == yb
            for _ in range(restarts):
                z = latent_attack(graph, xb, yb, eps, node, steps, step_size, projections)
                good &= graph.forward_from(node, z).argmax(1) == yb
            ok[i:i + batch_size] = good.cpu()
        out[f"layer {k}"] = ok.float().mean().item()
    return out
