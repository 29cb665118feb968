"""Certified accuracy of the smoothed LeNets on MNIST (benchmarks/smoothing_mnist.sh) against the published
numbers, and STN's sigma = 0.7 setting with the Renyi bound beside Cohen's bounds on the same counts.

    python benchmarks/smoothing_table.py [benchmarks/results/smoothing-mnist]     # markdown tables

The first table is Cohen's protocol (every 20th test image, ``certify.jsonl``). The published rows were measured on
all 10,000 test images, so a second table pools every certification of a model (``certify*.jsonl``, e.g. every 4th
image on a GPU, or ``--start 10 --step 20``) by test index: a larger sample of the same protocol. Each input's noise
comes from a generator seeded by (seed, index), so runs that share an index agree, which is checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from certkit.smoothing.run import load_rows, recertify, report

RADII = [0.25, 0.5, 0.75, 1.0]
# Salman et al. 2019 (SmoothAdv), LeNet on MNIST, certified accuracy (%) at L2 radius 0.25 / 0.5 / 0.75 / 1.0
PUBLISHED = {"gaussian": [98.5, 96.9, 94.3, 89.8], "stability": [98.6, 97.3, 94.9, 90.8],
             "smoothadv": [99.0, 98.2, 96.8, 92.9]}
# the configs' recipes: as shipped first, then γ = 2 (stability), the published MNIST commands ("-ref"), and
# SmoothAdv fine-tuned from the Gaussian models ("-ft")
VARIANTS = ("", "-g2", "-ref", "-ft")
STN_RADIUS, STN_PUBLISHED = 1.58, 69.0  # Li et al. 2019: MNIST, Renyi certificate


# header fields that must agree for certifications of one model to be pooled
SAME = ("checkpoint", "data", "noise", "sigma", "certificate", "n0", "n", "alpha", "seed")


def pooled_rows(model_dir: Path) -> list[dict]:
    """Every certified row of one model, once per test index, from all its ``certify*.jsonl`` files."""
    rows: dict[int, dict] = {}
    header = None
    for path in sorted(model_dir.glob("certify*.jsonl")):
        head = json.loads(path.read_text().split("\n", 1)[0])
        key = {k: head.get(k) for k in SAME}
        if header is not None and key != header:
            raise ValueError(f"{path}: certified with other settings than the other files of {model_dir}")
        header = key
        for r in load_rows(path):
            if r["idx"] in rows and rows[r["idx"]]["counts"] != r["counts"]:
                raise ValueError(f"{path}: index {r['idx']} has other counts than in another file")
            rows[r["idx"]] = r
    return [rows[i] for i in sorted(rows)]


def table(root: Path, pooled: bool) -> list[str]:
    head = "| training | σ | images | " + " | ".join(f"r = {r}" for r in RADII) + " |"
    lines = [head, "|" + "---|" * (3 + len(RADII))]
    best: dict[str, list[float]] = {}
    for kind in PUBLISHED:
        for variant in VARIANTS:
            group: dict[str, list[dict]] = {}
            for sigma in ("0.25", "0.5"):
                model_dir = root / f"mnist-lenet-{kind}{variant}-{sigma}"
                if not (model_dir / "certify.jsonl").exists():
                    continue
                group[sigma] = pooled_rows(model_dir) if pooled else load_rows(model_dir / "certify.jsonl")
            if pooled and (len(group) < 2 or len({len(r) for r in group.values()}) > 1
                           or all(len(r) <= 500 for r in group.values())):
                continue  # only pairs of σ pooled over the same, larger sample
            for sigma, rows in group.items():
                acc = [100 * t["certified"] for t in report(rows, RADII, 0.001)]
                name = f"{kind}{variant}" if pooled else kind
                best[name] = [max(a, b) for a, b in zip(best.get(name, acc), acc)]
                lines.append(f"| {kind}{variant} | {sigma} | {len(rows)} | " + " | ".join(f"{a:.1f}" for a in acc)
                             + " |")
    for name, acc in best.items():
        kind = name.split("-")[0]
        lines.append(f"| {name}: best row | | | " + " | ".join(f"{a:.1f}" for a in acc) + " |")
        lines.append(f"| {kind}: published | | | " + " | ".join(f"{a:.1f}" for a in PUBLISHED[kind]) + " |")
    return lines


def main(args: list[str]) -> None:
    root = Path(args[0] if args else "benchmarks/results/smoothing-mnist")
    lines = ["Every 20th test image (500):", *table(root, pooled=False), "",
             "Pooled over every certification of a model (larger samples; both σ on the same images):",
             *table(root, pooled=True)]
    stn = root / "mnist-lenet-stability-0.7" / "certify.jsonl"
    if stn.exists():
        rows = load_rows(stn)
        lines.append("")
        lines.append(f"STN setting (σ = 0.7, {len(rows)} images), certified accuracy at L2 = {STN_RADIUS} "
                     f"(published, Renyi: {STN_PUBLISHED}%):")
        for cert in ("renyi", "cohen2", "cohen"):
            acc = report(recertify(rows, cert, 0.001, 0.7), [STN_RADIUS], 0.001)[0]["certified"]
            lines.append(f"  {cert:7s} {100 * acc:.1f}%")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
