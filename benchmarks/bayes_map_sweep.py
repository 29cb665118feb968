"""The robust MAP fit every Bayesian method starts from, on its own: how the training ε, the length of the ε ramp
and a low-learning-rate finish move the IBP-certified accuracy of the MLP 784-512-10 (IBP likelihood, λ = 0.25,
log mix), certified at ε = 0.1 on the first 1,000 test images. One line of JSON per setting.

    CERTKIT_DATA=../shared/data python benchmarks/bayes_map_sweep.py fashion-mnist EPS_TRAIN:EPOCHS:RAMP:FINISH ...
    e.g. 0.15:20:15:5 = ε_train 0.15, 20 epochs of Adam at 1e-3 (ε ramped over 15), then 5 epochs at 1e-4;
    optional fifth field λ (default 0.25), then key=value fields lr=..., batch=... (Adam's lr and batch size),
    revive=C[, revive_epochs=E] (a penalty C·Σ_units max(0, −max_batch pre-activation) for the first E epochs),
    worst=crown (the worst case bounded by CROWN-IBP instead of IBP).
The row also gives the fraction of hidden units never active on the 1,000 clean test images ("dead").
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial

import torch

from certkit.bayes import inference as inf
from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik
from certkit.bayes.run import evaluate
from certkit.data import load_dataset
from certkit.models import build


class Reviving(ScheduledLoglik):
    """The likelihood minus ``coef``·Σ_units max(0, −max over the batch of the unit's clean pre-activation) per
    example, for the first ``epochs`` epochs: a unit that no input of the batch activates is pushed back up."""

    def __init__(self, loglik, eps: float, ramp_epochs: int, coef: float, epochs: int):
        super().__init__(loglik, eps, ramp_epochs)
        self.coef, self.until, self.epoch = coef, epochs, 0

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch if epoch is not None else self.until

    def __call__(self, model, params, x, y, **kw):
        out = super().__call__(model, params, x, y, **kw)
        if self.coef <= 0 or self.epoch >= self.until:
            return out
        return out - self.coef * len(x) * torch.relu(-_hidden(model, params, x).amax(0)).sum()


def _hidden(model, params, x):
    """The MLP's hidden pre-activations (B, units)."""
    from torch.func import functional_call

    hidden = torch.nn.Sequential(*list(model.children())[:-2])  # up to the last ReLU's input
    return functional_call(hidden, {k: v for k, v in params.items() if not k.startswith(f"{len(model) - 1}.")}, (x,))


def fit(train, eps: float, epochs: int, ramp: int, finish: int, lam: float = 0.25, lr: float = 1e-3,
        batch: int = 128, revive: float = 0.0, revive_epochs: int = 10**9, worst: str = "ibp"):
    torch.manual_seed(0)
    model = build("mlp", train.shape, 10, train.mean, train.std, hidden=[512]).eval()
    rob = partial(robust_loglik, lam=lam, worst=worst, num_classes=10, mix="log")
    params = inf.fit_map(model, train.x, train.y, Reviving(rob, eps, ramp, revive, revive_epochs), epochs, batch, lr)
    if finish:
        params = inf.fit_map(model, train.x, train.y, ScheduledLoglik(rob, eps, 0), finish, batch, lr / 10,
                             init=params)
    return model, params


def dead_fraction(model, params, x) -> float:
    """Hidden units of the MLP whose pre-activation is ≤ 0 on every input of x."""
    return float((_hidden(model, params, x).amax(0) <= 0).float().mean())


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    name, settings = args[0], args[1:]
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    for setting in settings:
        parts = setting.split(":")
        eps, epochs, ramp, finish = float(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])
        extra = [p for p in parts[4:] if "=" not in p]
        kw = {k: (v if k == "worst" else float(v)) for k, v in (p.split("=") for p in parts[4:] if "=" in p)}
        lam = float(extra[0]) if extra else 0.25
        lr, batch = kw.get("lr", 1e-3), int(kw.get("batch", 128))
        options = {k: kw[k] for k in ("revive", "revive_epochs", "worst") if k in kw}
        t = time.time()
        model, params = fit(train, eps, epochs, ramp, finish, lam, lr, batch, **options)
        secs = time.time() - t
        res = evaluate(model, inf.Posterior(model, [params], "map"), test.x[:1000], test.y[:1000], 0.1,
                       methods=("ibp", "crown"))
        print(json.dumps({"data": name, "eps_train": eps, "epochs": epochs, "ramp": ramp, "finish": finish,
                          "lam": lam, "lr": lr, "batch": batch, **options, "train_s": round(secs),
                          "dead": dead_fraction(model, params, test.x[:1000]), **res}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
