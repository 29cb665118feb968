"""Tables and plots for papers and terminals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

STYLES = ("markdown", "latex", "tsv")


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4f",
                 style: str = "markdown") -> str:
    """``rows`` as a table: ``markdown`` (aligned plain text, also valid Markdown), ``latex`` (a ``tabular``
    with booktabs rules, for a paper) or ``tsv`` (tab-separated, for spreadsheets and scripts)."""
    if style not in STYLES:
        raise ValueError(f"unknown table style {style!r}; choose from {', '.join(STYLES)}")
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    if style == "tsv":
        return "\n".join("\t".join(vals) for vals in [columns, *cells])
    if style == "latex":
        esc = lambda v: v.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace(  # noqa: E731
            "&", "\\&").replace("#", "\\#")
        body = [" & ".join(esc(v) for v in vals) + " \\\\" for vals in cells]
        return "\n".join([f"\\begin{{tabular}}{{l{'r' * (len(columns) - 1)}}}", "\\toprule",
                          " & ".join(esc(c) for c in columns) + " \\\\", "\\midrule", *body, "\\bottomrule",
                          "\\end{tabular}"])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


def accuracy_figure(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
                    xlabel: str = "ε (L∞)", step: bool = False):
    """The matplotlib figure of :func:`plot_accuracy_vs_eps` (for inspection or further styling)."""
    from certkit.errors import require

    matplotlib = require("matplotlib", "plot", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for name, (xs, ys) in curves.items():
        if step:
            ax.step(xs, [100 * y for y in ys], where="post", label=name)
        else:
            ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium", wrap=True)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_eps(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str = "", xlabel: str = "ε (L∞)", step: bool = False) -> Path:
    """One line per curve name: accuracy (y) against radius (x); written as PNG. ``step``: drawn as a step
    function without markers (certified accuracy on a fine grid of radii, as Cohen et al. plot it)."""
    fig = accuracy_figure(curves, title, xlabel, step)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["STYLES", "accuracy_figure", "format_table", "plot_accuracy_vs_eps"]
