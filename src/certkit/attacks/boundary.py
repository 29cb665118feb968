"""The Boundary Attack (Brendel, Rauber and Bethge 2018): a decision-based attack that needs only the predicted
label, so it also runs against randomised models (a smoothed classifier's majority vote) and is STN's check for
gradient masking (Li et al. 2019, Fig. 6).

It starts from an adversarial point (uniform noise that is misclassified, pulled towards the input by a binary
search along the line between them) and then walks along the decision boundary: each step draws a random
direction orthogonal to the line to the input, moves on the sphere around the input (relative size δ), then
towards the input (relative size ε), and keeps the new point only if it is still adversarial. δ and ε adapt per
input as in the paper: δ grows when more than half of the recent orthogonal steps stay adversarial and shrinks when
fewer than a fifth do; ε follows the success rate of the whole step the same way. Every kept point lies in the
data domain, is adversarial when it is kept, and is closer to the input than the one before (the move towards the
input shrinks the distance by the factor 1 − ε, and clipping into the box, which holds the input, cannot undo
that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Classify = Callable[[torch.Tensor], torch.Tensor]  # inputs (B, ...) -> predicted labels (B,)


@dataclass
class BoundaryResult:
    """``x_adv``: the closest adversarial points found (the input itself where none was found); ``success``:
    whether one was found; ``distance``: its L2 distance to the input (inf where none); ``queries``: label
    queries per input; ``history``: the distance of every input after each step (steps, B)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    queries: int
    history: list[torch.Tensor] = field(default_factory=list)


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def boundary_attack(classify: Classify, x: torch.Tensor, y: torch.Tensor, steps: int = 1000,
                    spherical_step: float = 0.01, source_step: float = 0.01, adaptation: float = 1.5,
                    window: int = 10, init_trials: int = 50, domain: tuple[float, float] = (0.0, 1.0),
                    generator: torch.Generator | None = None) -> BoundaryResult:
    """Untargeted Boundary Attack on the label function ``classify`` at ``(x, y)``, all inputs at once."""
    lo, hi = domain
    if ((x < lo) | (x > hi)).any():
        raise ValueError(f"inputs must lie in the domain {domain}")
    B = x.shape[0]
    queries = 0

    def adversarial(z: torch.Tensor) -> torch.Tensor:
        nonlocal queries
        queries += 1
        with torch.no_grad():
            return classify(z) != y

    # start: misclassified uniform noise, per input (inputs the model already gets wrong start at themselves)
    start, found = x.clone(), adversarial(x)
    for _ in range(init_trials):
        if found.all():
            break
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (hi - lo) + lo
        adv = adversarial(noise) & ~found
        start[adv], found = noise[adv], found | adv
    # binary search along the line towards the input: the smallest blend that is still adversarial
    far, near = torch.ones(B, device=x.device, dtype=x.dtype), torch.zeros(B, device=x.device, dtype=x.dtype)
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(12):
        mid = (far + near) / 2
        adv = adversarial(x + mid.view(shape) * (start - x)) | ~found
        far, near = torch.where(adv, mid, far), torch.where(adv, near, mid)
    x_adv = torch.where(found.view(shape), x + far.view(shape) * (start - x), x)
    dist = torch.where(found, _norm(x_adv - x).flatten(), torch.full_like(far, float("inf")))

    delta = torch.full_like(far, spherical_step)
    eps = torch.full_like(far, source_step)
    sph_hits, all_hits, trials = torch.zeros_like(far), torch.zeros_like(far), 0
    history = []
    for _ in range(steps):
        live = found & (dist > 0)
        if not live.any():
            break
        d = x_adv - x
        unit = d / _norm(d).clamp_min(1e-12)
        eta = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        eta = eta - (eta * unit).flatten(1).sum(1).view(shape) * unit  # orthogonal to the line to the input
        eta = eta / _norm(eta).clamp_min(1e-12) * delta.view(shape) * _norm(d)
        on_sphere = x + (d + eta) * (_norm(d) / _norm(d + eta).clamp_min(1e-12))
        cand = (on_sphere + eps.view(shape) * (x - on_sphere)).clamp(lo, hi)
        sph_ok = adversarial(on_sphere.clamp(lo, hi))
        ok = adversarial(cand)
        new_dist = _norm(cand - x).flatten()
        keep = live & ok & (new_dist < dist)
        x_adv = torch.where(keep.view(shape), cand, x_adv)
        dist = torch.where(keep, new_dist, dist)
        history.append(dist.clone())
        sph_hits += sph_ok.to(x.dtype)
        all_hits += ok.to(x.dtype)
        trials += 1
        if trials == window:  # the paper's adaptation: aim at about half of the steps succeeding
            p_sph, p_all = sph_hits / window, all_hits / window
            delta = torch.where(p_sph > 0.5, delta * adaptation, torch.where(p_sph < 0.2, delta / adaptation, delta))
            eps = torch.where(p_all > 0.5, eps * adaptation, torch.where(p_all < 0.2, eps / adaptation, eps))
            eps = eps.clamp(max=0.5)
            sph_hits.zero_(), all_hits.zero_()
            trials = 0
    return BoundaryResult(x_adv, found, dist, queries, history)
