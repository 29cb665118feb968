"""How much IBP certification the posterior's width costs: a robust MAP fit on MNIST (IBP likelihood, ε = 0.1,
10 epochs of Adam with an 8-epoch ε ramp), then one epoch of VOGN from it at each extrinsic damping given (weight
std ≈ √(T/(N·damping)) where the data hardly constrain a weight), certified on the first 500 test images.

    CERTKIT_DATA=../shared/data python benchmarks/bayes_width.py 0.01 0.1 1
    CERTKIT_DATA=../shared/data python benchmarks/bayes_width.py --map-only   # eq. (4) vs its log-space bound
"""

from __future__ import annotations

import sys
import time
from functools import partial

import torch

from certkit.bayes import inference as inf
from certkit.bayes.certify import certify_posterior
from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik
from certkit.bayes.run import evaluate
from certkit.data import load_dataset
from certkit.models import build


def robust_map(train, mix: str, epochs: int = 10, ramp: int = 8):
    torch.manual_seed(0)
    model = build("mlp", train.shape, 10, train.mean, train.std, hidden=[512]).eval()
    ll = ScheduledLoglik(partial(robust_loglik, lam=0.25, worst="ibp", num_classes=10, mix=mix), 0.1, ramp)
    return model, inf.fit_map(model, train.x, train.y, ll, epochs, 128, 1e-3)


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    if args and args[0] == "--map-only":
        for mix in ("prob", "log"):
            model, params = robust_map(train, mix)
            res = evaluate(model, inf.Posterior(model, [params], "map"), test.x[:1000], test.y[:1000], 0.1,
                           methods=("ibp",))
            print(f"MAP, mix={mix}: {res}", flush=True)
        return
    model, init = robust_map(train, "log")
    x, y = test.x[:500], test.y[:500]
    print(f"MAP: IBP-certified {certify_posterior(model, [init], x, y, 0.1).certified.float().mean():.3f}")
    ll = partial(robust_loglik, eps=0.1, lam=0.25, worst="ibp", num_classes=10, mix="log")
    for damping in map(float, args or ["0.01", "0.1", "1"]):
        t = time.time()
        post = inf.vogn(model, train.x, train.y, ll, 1, 128, 1e-4, temperature=0.1, damping=damping,
                        curvature_batch=16, init=init)
        std = float(torch.cat([v.sqrt().flatten() for v in post.info["var"].values()]).median())
        acc = (post.predictive(x).argmax(1) == y).float().mean()
        cert = certify_posterior(model, post.samples, x, y, 0.1).certified.float().mean()
        print(f"VOGN damping {damping:g}: weight std {std:.1e}, accuracy {acc:.3f}, IBP-certified {cert:.3f} "
              f"({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
