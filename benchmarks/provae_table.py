"""Table 1 and Fig. 3 of proVAE from the JSON files written by benchmarks/provae.sh (values per pixel).

    python benchmarks/provae_table.py benchmarks/results/provae-mnist
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    out = Path(folder)
    runs = sorted(out.glob("eps*.json"), key=lambda p: float(p.stem[3:]))
    d = 784
    print(f"{'eps_train':>9s} {'ELBO':>9s} {'bound@eps_train':>16s}  ELBO under PGD at eps_attack (per pixel)")
    curves = {}
    for p in runs:
        r = json.loads(p.read_text())
        atk = {float(k[4:]): v / d for k, v in r.items() if k.startswith("pgd@")}
        curves[p.stem[3:]] = atk
        print(f"{p.stem[3:]:>9s} {r['elbo'] / d:9.4f} {r['bound'] / d:16.4f}  " +
              "  ".join(f"{e}: {v:.4f}" for e, v in sorted(atk.items())))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, atk in curves.items():
        xs = sorted(atk)
        ax.plot(xs, [atk[e] for e in xs], marker="o", label=f"ε_train = {name}")
    ax.set_xlabel("ε_attack (L∞)")
    ax.set_ylabel("ELBO per pixel under PGD")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "elbo_vs_attack.png", dpi=120)
    print(f"plot: {out / 'elbo_vs_attack.png'}")


if __name__ == "__main__":
    main(sys.argv[1])
