"""The robust MAP fit every Bayesian method starts from, on its own: how the training ε, the length of the ε ramp
and a low-learning-rate finish move the IBP-certified accuracy of the MLP 784-512-10 (IBP likelihood, λ = 0.25,
log mix), certified at ε = 0.1 on the first 1,000 test images. One line of JSON per setting.

    CERTKIT_DATA=../shared/data python benchmarks/bayes_map_sweep.py fashion-mnist EPS_TRAIN:EPOCHS:RAMP:FINISH ...
    e.g. 0.15:20:15:5 = ε_train 0.15, 20 epochs of Adam at 1e-3 (ε ramped over 15), then 5 epochs at 1e-4;
    optional fifth field λ (default 0.25), then key=value fields lr=..., batch=... (Adam's lr and batch size).
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


def fit(train, eps: float, epochs: int, ramp: int, finish: int, lam: float = 0.25, lr: float = 1e-3,
        batch: int = 128):
    torch.manual_seed(0)
    model = build("mlp", train.shape, 10, train.mean, train.std, hidden=[512]).eval()
    rob = partial(robust_loglik, lam=lam, worst="ibp", num_classes=10, mix="log")
    params = inf.fit_map(model, train.x, train.y, ScheduledLoglik(rob, eps, ramp), epochs, batch, lr)
    if finish:
        params = inf.fit_map(model, train.x, train.y, ScheduledLoglik(rob, eps, 0), finish, batch, lr / 10,
                             init=params)
    return model, params


def dead_fraction(model, params, x) -> float:
    """Hidden units of the MLP whose pre-activation is ≤ 0 on every input of x."""
    from torch.func import functional_call

    hidden = torch.nn.Sequential(*list(model.children())[:-2])  # up to the last ReLU's input
    pre = functional_call(hidden, {k: v for k, v in params.items() if not k.startswith(f"{len(model) - 1}.")}, (x,))
    return float((pre.amax(0) <= 0).float().mean())


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    name, settings = args[0], args[1:]
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    for setting in settings:
        parts = setting.split(":")
        eps, epochs, ramp, finish = float(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])
        extra = [p for p in parts[4:] if "=" not in p]
        kw = {k: float(v) for k, v in (p.split("=") for p in parts[4:] if "=" in p)}
        lam = float(extra[0]) if extra else 0.25
        lr, batch = kw.get("lr", 1e-3), int(kw.get("batch", 128))
        t = time.time()
        model, params = fit(train, eps, epochs, ramp, finish, lam, lr, batch)
        secs = time.time() - t
        res = evaluate(model, inf.Posterior(model, [params], "map"), test.x[:1000], test.y[:1000], 0.1,
                       methods=("ibp",))
        print(json.dumps({"data": name, "eps_train": eps, "epochs": epochs, "ramp": ramp, "finish": finish,
                          "lam": lam, "lr": lr, "batch": batch, "train_s": round(secs),
                          "dead": dead_fraction(model, params, test.x[:1000]), **res}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
