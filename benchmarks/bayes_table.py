"""Table and plots of the Bayesian runs in a results folder (JSON files written by `certkit bayes eval --out`):
the paper's Fig. 1 (a bar per inference method: accuracy, PGD and certified accuracy, one panel per likelihood)
and Fig. 3 (predictive entropy on in- and out-of-distribution test images).
Usage: python benchmarks/bayes_table.py benchmarks/results/bnn-mnist
       python benchmarks/bayes_table.py --markdown benchmarks/results/bnn-mnist benchmarks/results/bnn-fashion-mnist"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ["bbb", "noisy-adam", "vogn", "swag", "hmc"]
LIKS = ["standard", "pgd", "ibp"]


def load(folder: Path) -> dict:
    runs = {}
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        runs[(r["method"], r["likelihood"])] = r
    return runs


def markdown(folders: list[str]) -> None:
    """README rows: one per method and likelihood, one column group per data set (percent; certified accuracy with
    the pairwise rule, Theorem 1's in parentheses)."""
    sets = [(Path(f).name.removeprefix("bnn-"), load(Path(f))) for f in folders]
    print("| likelihood | method | " + " | ".join(f"{n}: clean / PGD / IBP-cert / LBP-cert / AUROC" for n, _ in sets)
          + " |")
    print("|---|---|" + "---|" * len(sets))
    for lik in LIKS:
        for m in METHODS:
            cells = []
            for _, runs in sets:
                r = runs.get((m, lik))
                cells.append("—" if r is None else " / ".join(
                    f"{100 * r[k]:.1f}" + (f" ({100 * r[t]:.1f})" if (t := k.replace("_cert", "_theorem1_cert")) != k
                                           and t in r else "")
                    for k in ("accuracy", "pgd_accuracy", "ibp_certified", "crown_certified"))
                    + f" / {r['ood_auroc']:.2f}")
            print(f"| {lik} | {m} | " + " | ".join(cells) + " |")


def main(folder: str) -> None:
    out = Path(folder)
    runs = load(out)
    head = f"{'method':<11} {'likelihood':<9} {'n':>5} {'acc':>6} {'PGD':>6} {'IBP-cert':>8} {'LBP-cert':>8} " \
           f"{'IBP-T1':>6} {'LBP-T1':>6} {'AUROC':>6} {'w std':>7} {'train s':>8}  info"
    print(head)
    for lik in LIKS:
        for m in METHODS:
            r = runs.get((m, lik))
            if r is None:
                continue
            info = ", ".join(f"{k}={v:.3g}" for k, v in (r.get("info") or {}).items())
            print(f"{m:<11} {lik:<9} {r['n']:>5} {r['accuracy']:>6.3f} {r['pgd_accuracy']:>6.3f} "
                  f"{r.get('ibp_certified', float('nan')):>8.3f} {r.get('crown_certified', float('nan')):>8.3f} "
                  f"{r.get('ibp_theorem1_certified', float('nan')):>6.3f} "
                  f"{r.get('crown_theorem1_certified', float('nan')):>6.3f} "
                  f"{r.get('ood_auroc', float('nan')):>6.3f} {r.get('posterior_std', float('nan')):>7.1e} "
                  f"{r.get('train_seconds') or 0:>8.0f}  {info}")
    liks = [lik for lik in LIKS if any(k[1] == lik for k in runs)]
    if not liks:
        return
    fig, axes = plt.subplots(1, len(liks), figsize=(4.2 * len(liks), 3.2), squeeze=False)
    for ax, lik in zip(axes[0], liks):
        ms = [m for m in METHODS if (m, lik) in runs]
        for j, (key, label) in enumerate([("accuracy", "clean"), ("pgd_accuracy", "PGD"),
                                          ("ibp_certified", "IBP-certified"), ("crown_certified", "LBP-certified")]):
            ax.bar([i + 0.2 * j for i in range(len(ms))], [runs[(m, lik)].get(key, 0) for m in ms], 0.2,
                   label=label)
        ax.set_xticks([i + 0.3 for i in range(len(ms))], ms, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{lik} likelihood, eps = 0.1", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig1_accuracy.png", dpi=120)
    plt.close(fig)
    with_h = [(k, r) for k, r in runs.items() if "entropies_in" in r]
    if with_h:
        fig, axes = plt.subplots(len(liks), len(METHODS), figsize=(2.4 * len(METHODS), 2 * len(liks)),
                                 squeeze=False)
        for i, lik in enumerate(liks):
            for j, m in enumerate(METHODS):
                ax = axes[i][j]
                r = runs.get((m, lik))
                if r and "entropies_in" in r:
                    ax.hist(r["entropies_in"], bins=30, range=(0, 2.31), alpha=0.6, label="in", density=True)
                    ax.hist(r["entropies_out"], bins=30, range=(0, 2.31), alpha=0.6, label="out", density=True)
                ax.set_title(f"{m} / {lik}", fontsize=7)
                ax.tick_params(labelsize=6)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "fig3_entropy.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        markdown(sys.argv[2:])
    else:
        main(sys.argv[1])
