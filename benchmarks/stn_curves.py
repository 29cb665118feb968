"""STN's robustness curves on MNIST (Li et al. 2019, Fig. 3, 4 and 6): robust accuracy against attack size.

* Fig. 3 — TRADES against STN (σ = 0.7): L∞ (PGD; for STN with the expectation over the noise) and L2 (C&W; for STN
  on the noise-averaged logits), white-box (``kind = white``) and black-box transfer from a PGD-trained Madry
  model (``kind = black``: PGD crafted on the source, evaluated on the target).
* Fig. 4 — STN for several σ, white-box L∞ and L2.
* Fig. 6 — the decision-based Boundary Attack (labels only: for STN the majority vote of ``--boundary-m`` draws)
  against TRADES and STN, beside the white-box C&W curve of the same model.

A smoothed model's prediction at a point is its majority vote over ``--vote-n`` fresh draws (no abstention), as in
the paper's evaluation of the noisy classifier. For the minimum-distance attacks (C&W, Boundary) an input counts as
broken at radius r when the attack found a point within r that the model (the vote) misclassifies; an input
misclassified already is broken at every radius.

Each (figure, model, attack) block is appended to ``curves.jsonl`` when done; a rerun skips the blocks present
(kill and rerun to resume). ``--plot-only`` draws the PNGs from the rows.

    python benchmarks/stn_curves.py --trades runs/mnist-trades-0.3-short/model.safetensors \\
        --madry runs/mnist-madry-pgd-0.3-short/model.safetensors \\
        --stn 0.7=benchmarks/results/smoothing-mnist/mnist-lenet-stability-0.7/model.safetensors \\
        --stn 0.5=benchmarks/results/smoothing-mnist/mnist-lenet-stability-0.5/model.safetensors \\
        --stn 0.25=benchmarks/results/smoothing-mnist/mnist-lenet-stability-0.25/model.safetensors \\
        --count 500 --step 20 --out benchmarks/results/stn-curves
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from certkit.attacks import pgd
from certkit.attacks import smoothed as sa
from certkit.attacks.boundary import boundary_attack
from certkit.data import load_dataset
from certkit.io import load_model

LINF = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
L2 = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
L2_FINE = [round(0.25 * i, 2) for i in range(17)]


class Target:
    """A plain model (``sigma`` None) or the smoothed classifier of a base model with Gaussian noise σ."""

    def __init__(self, name: str, model: torch.nn.Module, sigma: float | None, args, gen: torch.Generator):
        self.name, self.model, self.sigma, self.args, self.gen = name, model, sigma, args, gen

    @torch.no_grad()
    def predict(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        if self.sigma is None:
            return self.model(x).argmax(1)
        out = []
        for i in range(0, len(x), 25):  # 25 inputs × n draws per pass
            out.append(sa.vote(self.model, x[i:i + 25], self.sigma, n or self.args.vote_n, generator=self.gen))
        return torch.cat(out)

    def linf_white(self, x, y, eps):
        if self.sigma is None:
            return pgd(self.model, x, y, eps, "inf", self.args.pgd_steps, generator=self.gen).x_adv
        return sa.eot_pgd(self.model, x, y, eps, self.sigma, self.args.eot_m, self.args.eot_steps, generator=self.gen)

    def l2_white(self, x, y, eps):
        """L2 PGD; for STN SmoothAdv's attack on the soft smoothed classifier (Salman et al. 2019), m draws."""
        if self.sigma is None:
            return pgd(self.model, x, y, eps, 2, self.args.pgd_steps, generator=self.gen).x_adv
        return sa.smoothadv_pgd(self.model, x, y, eps, self.sigma, self.args.eot_m, self.args.eot_steps,
                                generator=self.gen)

    def cw(self, x, y):
        """The smallest adversarial δ C&W finds over the c grid (vote-checked for smoothed models): (x_adv, found)."""
        best, dist = x.clone(), torch.full((len(x),), float("inf"))
        for c in self.args.cw_c:
            xa = sa.eot_cw(self.model, x, y, self.sigma or 0.0, c=c, kappa=self.args.cw_kappa,
                           samples=self.args.eot_m if self.sigma else 1, steps=self.args.cw_steps,
                           lr=self.args.cw_lr, generator=self.gen)
            ok = (self.predict(xa) != y) & (xa != x).flatten(1).any(1)
            d = (xa - x).flatten(1).norm(dim=1)
            better = ok & (d < dist)
            best[better], dist[better] = xa[better], d[better]
        return best, dist


def curve(broken_at: dict[float, torch.Tensor]) -> list[tuple[float, float]]:
    return [(r, 1 - float(b.float().mean())) for r, b in broken_at.items()]


def run_block(kind: str, attack: str, target: Target, x, y, source=None, gen=None) -> list[tuple[float, float]]:
    wrong = target.predict(x) != y
    if attack == "linf-pgd":
        rows = {}
        for eps in LINF:
            xa = x if eps == 0 else (target.linf_white(x, y, eps) if source is None
                                     else pgd(source, x, y, eps, "inf", target.args.pgd_steps, generator=gen).x_adv)
            rows[eps] = wrong | (target.predict(xa) != y)
        return curve(rows)
    if attack == "l2-pgd":  # white-box, or crafted on the source
        rows = {}
        for eps in L2:
            xa = x if eps == 0 else (target.l2_white(x, y, eps) if source is None
                                     else pgd(source, x, y, eps, 2, target.args.pgd_steps, generator=gen).x_adv)
            rows[eps] = wrong | (target.predict(xa) != y)
        return curve(rows)
    if attack == "l2-cw":
        _, dist = target.cw(x, y)
    elif attack == "boundary":
        m = target.args.boundary_m

        def classify(z):
            return target.predict(z, m)
        r = boundary_attack(classify, x, y, steps=target.args.boundary_steps, generator=gen)
        ok = r.success & (target.predict(r.x_adv) != y)  # the final point, judged by the full vote
        dist = torch.where(ok, r.distance, torch.full_like(r.distance, float("inf")))
    else:
        raise ValueError(attack)
    return curve({r: wrong | (dist <= r + 1e-9) for r in L2_FINE})


def blocks(args) -> list[tuple[str, str, str, str, str | None]]:
    """(figure, kind, attack, target, source) in run order."""
    sig = sorted(args.stn, key=float, reverse=True)
    main = f"stn-{args.fig3_sigma}"
    out = [("3", "white", a, t, None) for t in ("trades", main) for a in ("linf-pgd", "l2-pgd", "l2-cw")]
    if args.madry:
        out += [("3", "black", a, t, "madry") for t in ("trades", main) for a in ("linf-pgd", "l2-pgd")]
    out += [("6", "decision", "boundary", t, None) for t in ("trades", main)]
    out += [("4", "white", a, f"stn-{s}", None) for s in sig if s != args.fig3_sigma for a in ("linf-pgd", "l2-pgd")]
    return out


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def find(fig, target, attack, kind):
        for r in rows:
            if (r["figure"], r["target"], r["attack"], r["kind"]) == (fig, target, attack, kind):
                return r
        return None

    def draw(ax, r, label, style):
        if r:
            ax.plot([p[0] for p in r["curve"]], [100 * p[1] for p in r["curve"]], style, label=label)

    def finish(ax, xlabel):
        ax.set(xlabel=xlabel, ylabel="robust accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    def save(fig, title, name):
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    stn = sorted({r["target"] for r in rows if r["target"].startswith("stn-")}, key=lambda t: float(t[4:]))
    main = next((r["target"] for r in rows if r["figure"] == "3" and r["target"].startswith("stn-")), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (white, black, xlabel) in zip(axes, (("linf-pgd", "linf-pgd", "L∞ attack size"),
                                                 ("l2-cw", "l2-pgd", "L2 attack size"))):
        for t, colour in (("trades", "C0"), (main, "C1")):
            name = "TRADES" if t == "trades" else f"STN σ = {t[4:]}" if t else ""
            draw(ax, find("3", t, white, "white"), f"{name}, white-box" + (" C&W" if white == "l2-cw" else ""),
                 colour + "-")
            if white == "l2-cw":
                draw(ax, find("3", t, "l2-pgd", "white"), f"{name}, white-box PGD", colour + ":")
            draw(ax, find("3", t, black, "black"), f"{name}, transfer from Madry", colour + "--")
        finish(ax, xlabel)
    save(fig, "STN Fig. 3 on MNIST: TRADES vs STN", "fig3.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("linf-pgd", "L∞ attack size (EOT-PGD)"), ("l2-pgd", "L2 attack size (PGD; SmoothAdv's for STN)"))
    for ax, (attack, xlabel) in zip(axes, panels):
        for i, t in enumerate(stn):
            draw(ax, find("4", t, attack, "white") or find("3", t, attack, "white"), f"STN σ = {t[4:]}", f"C{i}-")
        finish(ax, xlabel)
    save(fig, "STN Fig. 4 on MNIST: the effect of σ (white-box)", "fig4.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t, colour in (("trades", "C0"), (main, "C1")):
        name = "TRADES" if t == "trades" else f"STN σ = {t[4:]}" if t else ""
        draw(ax, find("6", t, "boundary", "decision"), f"{name}, Boundary Attack", colour + "--")
        draw(ax, find("3", t, "l2-cw", "white"), f"{name}, C&W (white-box)", colour + "-")
        draw(ax, find("3", t, "l2-pgd", "white"), f"{name}, PGD (white-box)", colour + ":")
    finish(ax, "L2 attack size")
    save(fig, "STN Fig. 6 on MNIST: decision-based vs white-box", "fig6.png")


def table(rows: list[dict]) -> str:
    """Markdown: robust accuracy (%) at L∞ 0.1–0.4 and L2 1–4, a line per (model, attack, kind)."""
    names = {("white", "linf-pgd"): "white-box L∞ PGD", ("white", "l2-pgd"): "white-box L2 PGD",
             ("white", "l2-cw"): "white-box C&W", ("black", "linf-pgd"): "transfer L∞ PGD from Madry",
             ("black", "l2-pgd"): "transfer L2 PGD from Madry", ("decision", "boundary"): "Boundary Attack"}
    lines = []
    for r in sorted(rows, key=lambda r: (r["target"] != "trades", r["target"], r["kind"] != "white", r["attack"])):
        c = {round(a, 2): 100 * v for a, v in r["curve"]}
        linf = r["attack"] == "linf-pgd"
        cells = [f"{c[k]:.1f}" if linf else "" for k in (0.1, 0.2, 0.3, 0.4)]
        cells += ["" if linf else f"{c[k]:.1f}" for k in (1.0, 2.0, 3.0, 4.0)]
        model = "TRADES" if r["target"] == "trades" else f"STN σ = {r['target'][4:]}"
        lines.append(f"| {model} | {names[(r['kind'], r['attack'])]} (n = {r['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trades", required=True)
    ap.add_argument("--madry", help="PGD-trained source of the transfer attacks")
    ap.add_argument("--stn", action="append", default=[], metavar="SIGMA=CHECKPOINT", required=True)
    ap.add_argument("--fig3-sigma", default="0.7")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--vote-n", type=int, default=100, help="draws of the smoothed classifier's vote")
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--eot-steps", type=int, default=20)
    ap.add_argument("--eot-m", type=int, default=8, help="noise draws per EOT gradient")
    ap.add_argument("--cw-c", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--cw-lr", type=float, default=0.1)
    ap.add_argument("--cw-kappa", type=float, default=0.0)
    ap.add_argument("--boundary-steps", type=int, default=500)
    ap.add_argument("--boundary-m", type=int, default=25, help="draws of the vote the Boundary Attack sees")
    ap.add_argument("--boundary-count", type=int, default=None, help="inputs for the Boundary Attack (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run only these figures (3, 4, 6)")
    ap.add_argument("--attacks", nargs="*", help="run only these attacks (linf-pgd, l2-pgd, l2-cw, boundary)")
    ap.add_argument("--kinds", nargs="*", help="run only these kinds (white, black, decision)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/stn-curves")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not args.plot_only:
        torch.set_num_threads(args.threads)
        args.stn = dict(s.split("=", 1) for s in args.stn)
        models = {"trades": (args.trades, None), **{f"stn-{s}": (p, float(s)) for s, p in args.stn.items()}}
        data = load_dataset("mnist", "test")
        idx = list(range(0, args.count * args.step, args.step))
        x, y = data.x[idx], data.y[idx]
        madry = load_model(args.madry)[0].eval() if args.madry else None
        for fig, kind, attack, target, source in blocks(args):
            # the rows written so far, by this or another run of the script (runs with disjoint --only share a file)
            rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            done = {(r["figure"], r["kind"], r["attack"], r["target"]) for r in rows}
            if (fig, kind, attack, target) in done or (args.only and fig not in args.only) or \
                    (args.attacks and attack not in args.attacks) or (args.kinds and kind not in args.kinds):
                continue
            gen = torch.Generator().manual_seed(args.seed)
            path_, sigma = models[target]
            t = Target(target, load_model(path_)[0].eval(), sigma, args, gen)
            xs, ys = (x[:args.boundary_count], y[:args.boundary_count]) if attack == "boundary" else (x, y)
            t0 = time.perf_counter()
            c = run_block(kind, attack, t, xs, ys, madry if source else None, gen)
            row = {"figure": fig, "kind": kind, "attack": attack, "target": target, "source": source,
                   "checkpoint": path_, "sigma": sigma, "n": len(ys),
                   "test_indices": f"0:{len(ys) * args.step}:{args.step}",
                   "vote_n": args.vote_n if sigma else None, "curve": c, "time_s": round(time.perf_counter() - t0, 1),
                   "settings": {k: getattr(args, k) for k in ("pgd_steps", "eot_steps", "eot_m", "cw_c", "cw_steps",
                                                             "cw_lr", "cw_kappa", "boundary_steps", "boundary_m")}}
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"fig {fig} {kind:8s} {attack:9s} {target:8s}: " + " ".join(f"{r:g}:{100 * a:.1f}" for r, a in c)
                  + f"  ({row['time_s']} s)", flush=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    plot(rows, out)
    print(table(rows))
    print(f"figures: {out}/fig3.png, fig4.png, fig6.png")


if __name__ == "__main__":
    main()
