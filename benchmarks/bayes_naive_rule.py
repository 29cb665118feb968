"""How much of a published certified accuracy can come from an unsound decision rule: for saved posteriors, the
IBP-certified accuracy under Theorem 1 (sound; certkit's) against the rule that averages the softmax of each
sample's worst-case logit vector for the label and takes its argmax (`naive_certify`; not sound for more than two
classes, see ../shared/PITFALLS.md). Same models, same IBP bounds, same images (the first 1,000 test images),
ε = 0.1.

    CERTKIT_DATA=../shared/data python benchmarks/bayes_naive_rule.py fashion-mnist runs/bnn-fashion-mnist-*-ibp
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from certkit.bayes.certify import certify_posterior, naive_certify
from certkit.bayes.run import load_run
from certkit.data import load_dataset


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    name, runs = args[0], args[1:]
    eps = 0.1  # the paper's certification radius (training may use a larger one)
    test = load_dataset(name, "test")
    x, y = test.x[:1000], test.y[:1000]
    for run in runs:
        model, post, cfg = load_run(Path(run))
        sound = naive = 0
        for i in range(0, len(y), 100):
            xb, yb = x[i:i + 100], y[i:i + 100]
            sound += int(certify_posterior(model, post.samples, xb, yb, eps, "ibp").certified.sum())
            naive += int(naive_certify(model, post.samples, xb, yb, eps).sum())
        print(json.dumps({"run": Path(run).name, "n": len(y), "eps": eps, "samples": len(post.samples),
                          "theorem1_certified": sound / len(y), "naive_rule": naive / len(y)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
