"""Tables and plots for papers and terminals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4f") -> str:
    """A plain-text table (also valid Markdown) of ``rows``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


def plot_accuracy_vs_eps(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str = "", xlabel: str = "ε (L∞)") -> Path:
    """One line per curve name: accuracy (y) against radius (x); written as PNG."""
    from certkit.errors import require

    matplotlib = require("matplotlib", "plot", "plotting")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["format_table", "plot_accuracy_vs_eps"]
