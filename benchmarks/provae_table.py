"""Table 1 and Fig. 3 of proVAE from the JSON files written by benchmarks/provae.sh (per image; the plot per pixel).

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
    print("per image (nats); train bound: the mean certified bound over the last training epoch, at eps_train")
    print(f"{'eps_train':>9s} {'train bound':>12s} {'test ELBO':>10s} {'test bound':>11s} {'PGD@eps_tr':>11s}  "
          "test ELBO under PGD at eps_attack")
    curves = {}
    for p in runs:
        r = json.loads(p.read_text())
        eps = float(p.stem[3:])
        atk = {float(k[4:]): v for k, v in r.items() if k.startswith("pgd@")}
        curves[p.stem[3:]] = atk
        hist = out / f"{p.stem}-history.jsonl"
        train = json.loads(hist.read_text().splitlines()[-1])["train_bound"] if hist.exists() else float("nan")
        at_eps = atk.get(eps, float("nan"))
        print(f"{p.stem[3:]:>9s} {train:12.1f} {r['elbo']:10.1f} {r['bound']:11.1f} {at_eps:11.1f}  " +
              "  ".join(f"{e}: {v:.1f}" for e, v in sorted(atk.items())))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, atk in curves.items():
        xs = sorted(atk)
        ax.plot(xs, [atk[e] / d for e in xs], marker="o", label=f"ε_train = {name}")
    ax.set_xlabel("ε_attack (L∞)")
    ax.set_ylabel("ELBO per pixel under PGD")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "elbo_vs_attack.png", dpi=120)
    print(f"plot: {out / 'elbo_vs_attack.png'}")


if __name__ == "__main__":
    main(sys.argv[1])
