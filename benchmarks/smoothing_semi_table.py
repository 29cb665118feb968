"""Certified accuracy of the semi-supervised smoothing runs (benchmarks/smoothing_semi.sh): LeNets with σ = 0.5
trained on 6,000 labeled MNIST images, with and without self-training on the other 54,000 and pre-training on
Fashion-MNIST, beside the models trained on all 60,000 labels; Cohen's CERTIFY on the same 1,000 test images.

    python benchmarks/smoothing_semi_table.py [benchmarks/results/smoothing-semi]     # a markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from certkit.smoothing.run import load_results, report

RADII = [0.0, 0.25, 0.5, 0.75, 1.0]
ROWS = [("gaussian-0.5-l6000", "Gaussian, 6,000 labels"),
        ("gaussian-0.5-l6000-long", "Gaussian, 6,000 labels, 180 epochs (the self-training run's steps)"),
        ("gaussian-0.5-l6000-self", "Gaussian, 6,000 labels + self-training"),
        ("gaussian-0.5-l6000-pre", "Gaussian, 6,000 labels, pre-trained on Fashion-MNIST"),
        ("gaussian-0.5-l6000-pre-self", "Gaussian, 6,000 labels, pre-trained + self-training"),
        ("gaussian-0.5-full", "Gaussian, all 60,000 labels (reference)"),
        ("smoothadv-0.5-l6000", "SmoothAdv, 6,000 labels"),
        ("smoothadv-0.5-l6000-self", "SmoothAdv, 6,000 labels + self-training"),
        ("smoothadv-0.5-full", "SmoothAdv, all 60,000 labels (reference)")]


def main(root: Path) -> None:
    head = "| training | images | " + " | ".join(f"r = {r}" for r in RADII) + " |"
    print(head + "\n|" + "---|" * (2 + len(RADII)))
    for name, label in ROWS:
        path = root / f"mnist-lenet-{name}" / "certify.jsonl"
        if not path.exists():
            continue
        header, rows = load_results(path)
        acc = report(rows, RADII, header.get("alpha", 0.001))
        cells = " | ".join(f"{100 * a['certified']:.1f}" for a in acc)
        print(f"| {label} | {len(rows)} | {cells} |")
    teacher = root / "mnist-lenet-standard-l6000" / "history.jsonl"
    if teacher.exists():
        last = json.loads(teacher.read_text().strip().splitlines()[-1])
        acc = next(v for k, v in last.items() if k.startswith("test_clean_acc"))
        print(f"\nteacher (standard LeNet, 6,000 labels): clean accuracy {100 * acc:.1f} % on the first 1,000 test "
              "images")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/smoothing-semi"))
