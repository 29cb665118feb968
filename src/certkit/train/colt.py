"""COLT: convex layerwise adversarial training (Balunović & Vechev, ICLR 2020, Algorithm 1).

Training goes through stages. Stage 0 is PGD training in the input space (Madry et al.); stage l ≥ 1 attacks
the *latent* region after the l-th chosen ReLU layer: the DeepZ zonotope ``a + A·e`` of the ε-box, with the
zonotope's bounds estimated by Cauchy random projections (:func:`~certkit.bounds.zonotope.cauchy_bounds`).
A latent point starts at random e ∈ [−1, 1]^m and moves by projected signed-gradient steps
``e ← clip(e + α·sign(∇_e L), −1, 1)`` (∇_e L = Aᵀ∇_x L, computed by autograd through one forward pass:
:func:`~certkit.bounds.zonotope.latent_point`); the layers after the latent layer are trained on it, without
backpropagating through the relaxation, and the layers up to it are frozen from the start of the stage on.

Per stage l (of L): ε_l = ε·start_factor·eps_factor^(L−1−l) (larger early on), κ ramps from 0 to 1 over the
first ``mix_epochs`` — the loss is ``κ·L_l + (1 − κ)·L_{l−1}`` (L_{−1}: the clean loss; with ``nat_factor``
a fixed share of clean loss is added) — plus the ReLU-stability term ``κ·r_l·Σ max(0, −l)·max(0, u)`` on the
next latent layer's estimated pre-activation bounds (COLT appendix D; r_l grows by ``relu_stable_factor`` per
stage), and the loop's L1 penalty. The learning rate is ``lr·lr_stage_factor^l``, halved (``lr_gamma``) every
``lr_step`` epochs after the mixing epochs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certkit import graph as g
from certkit.attacks.latent import latent_attack, latent_layers, latent_robustness  # noqa: F401 - re-exported
from certkit.attacks.pgd import pgd
from certkit.bounds.zonotope import cauchy_bounds
from certkit.specs import LinfBall
from certkit.train.objectives import Objective


@dataclass
class ColtSchedule:
    """The stage structure: ``stage_epochs[l]`` epochs in stage l (stage 0: input space, then one per latent
    layer), and the per-stage factors of Algorithm 1."""

    stage_epochs: list[int]
    eps: float
    start_eps_factor: float = 1.05
    eps_factor: float = 1.05
    mix_epochs: int = 1
    lr: float = 1e-3
    lr_stage_factor: float = 0.5
    lr_step: int = 10
    lr_gamma: float = 0.5
    relu_stable: float | None = None
    relu_stable_factor: float = 1.0
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [sum(self.stage_epochs[:i]) for i in range(len(self.stage_epochs))]

    def stage(self, epoch: float) -> int:
        return max(i for i, s in enumerate(self.starts) if epoch >= s)

    def stage_eps(self, stage: int) -> float:
        return self.eps * self.start_eps_factor * self.eps_factor ** (len(self.stage_epochs) - 1 - stage)

    def kappa(self, epoch: float) -> float:
        s = self.stage(epoch)
        return 1.0 if self.mix_epochs <= 0 else min(1.0, (epoch - self.starts[s]) / self.mix_epochs)

    def lr_at(self, epoch: float) -> float:
        s = self.stage(epoch)
        after_mix = int(max(0.0, epoch - self.starts[s] - self.mix_epochs) // self.lr_step)
        return self.lr * self.lr_stage_factor ** s * self.lr_gamma ** after_mix

    def stable_weight(self, stage: int) -> float:
        return 0.0 if self.relu_stable is None else self.relu_stable * self.relu_stable_factor ** stage


def colt_schedule(cfg: Any) -> ColtSchedule:
    """The schedule a :class:`~certkit.train.loop.TrainConfig`'s [colt] section describes."""
    c = cfg.colt
    return ColtSchedule(c.stage_epochs, cfg.eps, c.start_eps_factor, c.eps_factor, c.mix_epochs, cfg.lr,
                        c.lr_stage_factor, c.lr_step, cfg.lr_gamma, c.relu_stable, c.relu_stable_factor)


class ColtTraining(Objective):
    """One step of COLT (module docstring). ``layers``: graph indices of the latent ReLU outputs, one per stage
    after stage 0; ``steps_per_epoch`` converts steps to (fractional) epochs for the schedule."""

    name = "colt"

    def __init__(self, schedule: ColtSchedule, layers: list[int], steps_per_epoch: int, attack_steps: int = 10,
                 attack_step: float = 0.25, projections: int = 50, nat_factor: float = 0.0,
                 pgd_steps: int | None = None):
        if len(schedule.stage_epochs) != len(layers) + 1:
            raise ValueError(f"{len(schedule.stage_epochs)} stages need {len(schedule.stage_epochs) - 1} latent "
                             f"layers, got {len(layers)}")
        self.schedule, self.layers, self.steps_per_epoch = schedule, layers, steps_per_epoch
        self.attack_steps, self.attack_step, self.projections = attack_steps, attack_step, projections
        self.nat_factor = nat_factor
        self.pgd_steps = attack_steps if pgd_steps is None else pgd_steps

    def lr_at(self, epoch: float) -> float:
        """COLT's own schedule: the learning rate restarts (scaled) at every stage and decays within it."""
        return self.schedule.lr_at(epoch)

    def end_epoch(self, epoch: int, out: Path) -> None:
        """At the end of a stage, keep its model as ``stage{k}.safetensors``."""
        if epoch + 1 in self.schedule.starts[1:] + [sum(self.schedule.stage_epochs)]:
            shutil.copyfile(out / "model.safetensors", out / f"stage{self.schedule.stage(epoch)}.safetensors")

    def freeze(self, model: nn.Module, stage: int) -> None:
        """Layers up to the stage's latent layer take no more updates (their parameters get no gradient)."""
        graph = g.to_graph(model)
        last = self.layers[stage - 1] if stage > 0 else -1
        for i, node in enumerate(graph.nodes):
            if isinstance(node.op, g.AffineOp):
                for p in node.op.module.parameters():
                    p.requires_grad_(i > last)

    def _loss_at(self, model, x, y, eps, level: int, bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """CE and accuracy at level −1 (clean), 0 (PGD in the input space) or l ≥ 1 (latent layer l)."""
        graph = g.to_graph(model)
        if level < 0:
            out = model(x)
        elif level == 0:
            xa = pgd(model, x, y, eps, "inf", self.pgd_steps, restarts=1).x_adv
            out = model(xa)
        else:
            node = self.layers[level - 1]
            z = latent_attack(graph, x, y, eps, node, self.attack_steps, self.attack_step, self.projections,
                              bounds)
            out = graph.forward_from(node, z)
        return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean()

    def __call__(self, model, x, y, step):
        epoch = step / self.steps_per_epoch
        sch = self.schedule
        stage, kappa = sch.stage(epoch), sch.kappa(epoch)
        eps = sch.stage_eps(stage)
        self.freeze(model, stage)
        graph = g.to_graph(model)
        s = LinfBall(x, eps)
        nxt = self.layers[stage] if stage < len(self.layers) else None
        w_stable = sch.stable_weight(stage) * kappa if nxt is not None else 0.0
        stop = max([self.layers[stage - 1] if stage > 0 else 0, nxt or 0])
        was_training = model.training
        model.eval()
        if w_stable > 0:  # differentiable estimates: the stability term trains the layers below `nxt`
            bounds = cauchy_bounds(graph, s, self.projections, return_all=True, stop=stop)
        else:
            with torch.no_grad():
                bounds = cauchy_bounds(graph, s, self.projections, return_all=True, stop=stop)
        cur, cur_acc = self._loss_at(model, x, y, eps, stage, bounds)
        prev, prev_acc = self._loss_at(model, x, y, eps, stage - 1, bounds) if kappa < 1 else (cur, cur_acc)
        model.train(was_training)
        loss = kappa * cur + (1 - kappa) * prev
        metrics = {"stage": float(stage), "eps": eps, "kappa": kappa, "adv_loss": cur.detach(), "adv_acc": cur_acc}
        if self.nat_factor > 0:
            nat = F.cross_entropy(model(x), y)
            loss = self.nat_factor * nat + (1 - self.nat_factor) * loss
        if w_stable > 0:
            b = bounds[graph.nodes[nxt].inputs[0]]
            stable = (b.lower.neg().clamp(min=0) * b.upper.clamp(min=0)).flatten(1).sum(1).mean()
            loss = loss + w_stable * stable
            metrics["unstable"] = ((b.lower < 0) & (b.upper > 0)).flatten(1).sum(1).float().mean().detach()
        metrics["loss"] = loss.detach()
        return loss, metrics
