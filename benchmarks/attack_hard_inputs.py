"""Which attack finds the counterexamples that the cascade's first PGD misses? On COLT's released MNIST net at
L∞ 0.1: the 14 test images that branch and bound falsified after PGD (50 steps × 3 restarts) had passed them,
and the 6 left undecided at 120 s (`benchmarks/results/colt-mnist-0.1/recheck-bab.jsonl`). Prints, per attack,
how many of each group it breaks and its time (one thread).

    CERTKIT_DATA=../shared/data python benchmarks/attack_hard_inputs.py [NET=../shared/models/colt/mnist_0.1.onnx]
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from certkit import Normalize
from certkit.attacks.pgd import pgd_minimize, pgd_search
from certkit.data import load_dataset
from certkit.onnx_io import load_onnx
from certkit.specs import Box, LinfBall, margin_spec

GROUPS = {"falsified by bab": [151, 359, 448, 951, 2938, 3726, 4289, 4405, 4639, 6173, 6568, 6572, 9749, 9891],
          "undecided at 120 s": [1364, 1554, 2488, 4575, 6561, 6573]}


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    net = args[0] if args else "../shared/models/colt/mnist_0.1.onnx"
    model = nn.Sequential(Normalize(0.1307, 0.3081), load_onnx(net)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = load_dataset("mnist", "test")
    for name, ids in GROUPS.items():
        idx = torch.tensor(ids)
        x, y = test.x[idx], test.y[idx]
        s = LinfBall(x, 0.1, (0.0, 1.0))
        box, C = Box(s.lower, s.upper), margin_spec(y, 10).C

        def margin(z, C=C):  # min_j f_y − f_j per input: ≤ 0 is a counterexample
            return torch.einsum("bkn,bn->bk", C, model(z)).min(1).values

        def per_target(restarts: int, C=C, box=box, x=x) -> torch.Tensor:  # f_y − f_j for every j on its own
            K = C.shape[1]
            rows = C.reshape(-1, 1, C.shape[2])
            b = Box(box.lower.repeat_interleave(K, 0), box.upper.repeat_interleave(K, 0))
            f = lambda z: torch.einsum("bkn,bn->bk", rows, model(z))[:, 0]  # noqa: E731
            v = pgd_minimize(f, b, 50, restarts, start=x.repeat_interleave(K, 0))[1]
            return v.view(-1, K).min(1).values

        def search(seconds: float, C=C, box=box) -> torch.Tensor:
            out = []
            for k in range(len(C)):
                f = lambda z, k=k: torch.einsum("kn,bn->bk", C[k], model(z)).min(1).values  # noqa: E731
                out.append(pgd_search(f, box.lower[k:k + 1], box.upper[k:k + 1], seconds)[1])
            return torch.tensor(out)

        attacks = {"PGD 50 steps x 3 restarts (the first attack)": lambda: pgd_minimize(margin, box, 50, 3)[1],
                   "PGD 50 x 30": lambda: pgd_minimize(margin, box, 50, 30)[1],
                   "PGD 200 x 10": lambda: pgd_minimize(margin, box, 200, 10)[1],
                   "per-target PGD 50 x 3 (9 targets)": lambda: per_target(3),
                   "pgd_search, 0.5 s per input": lambda: search(0.5),
                   "pgd_search, 5 s per input": lambda: search(5.0)}
        print(f"{name} ({len(ids)} inputs)")
        for label, attack in attacks.items():
            torch.manual_seed(0)
            t = time.perf_counter()
            v = attack()
            print(f"  {label:46s} breaks {int((v <= 0).sum()):2d}  {time.perf_counter() - t:6.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
