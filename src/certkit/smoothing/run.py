"""Certifying a data set with a smoothed classifier: Cohen-compatible TSV and JSON lines, resumable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from certkit.io import ResultsWriter
from certkit.smoothing.smooth import CompiledBase, Smooth, certified_accuracy, certified_accuracy_lower, certify_counts

TSV_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def _rewrite_tsv(path: Path, rows: list[dict]) -> None:
    lines = [TSV_HEADER] + [f"{r['idx']}\t{r['label']}\t{r['predict']}\t{r['radius']:.4f}\t{int(r['correct'])}\t"
                            f"{r['time']:.4f}" for r in rows]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def certify_dataset(smooth: Smooth, x: torch.Tensor, y: torch.Tensor, indices: list[int], n0: int, n: int,
                    alpha: float, certificate: str, out: str | Path, header: dict | None = None,
                    batch_size: int = 1, seed: int = 0, progress: bool = True, executor=None,
                    compile: bool = False) -> list[dict]:
    """Certify every input; rows go to ``out.jsonl`` (the record, resumable) and ``out.tsv`` (Cohen's format:
    ``idx label predict radius correct time``, radius 0 and predict −1 when abstaining). A killed run resumes
    after the last written batch, without duplicated rows; each input's noise comes from a generator on x's device
    seeded by (seed, idx), so a resumed run gives the same numbers as an uninterrupted one on that device, and a
    run on Ray workers (an :class:`~certkit.parallel.Executor`; ``batch_size`` inputs per task) the same counts
    as one in this process. ``compile``: each worker compiles its copy of the base model
    (:class:`~certkit.smoothing.smooth.CompiledBase`)."""
    import copy

    from certkit.parallel import Executor, shards

    executor = executor or Executor()
    out = Path(out)
    writer = ResultsWriter(out.with_suffix(".jsonl"), key="idx", header=header)
    rows = [r for r in writer.results if "idx" in r]
    todo = [k for k, i in enumerate(indices) if i not in writer.done]
    shared = {"smooth": smooth, "x": x, "y": y, "ids": list(indices), "compile": False}
    if executor.distributed:  # the base model travels on the CPU, uncompiled; each worker compiles its own
        base = smooth.base.model if isinstance(smooth.base, CompiledBase) else smooth.base
        shared.update(smooth=Smooth(copy.deepcopy(base).cpu(), smooth.num_classes, smooth.noise, smooth.batch_size),
                      x=x.cpu(), compile=compile or isinstance(smooth.base, CompiledBase))
    args = {"n0": n0, "n": n, "alpha": alpha, "certificate": certificate, "seed": seed, "device": str(x.device)}
    bar = tqdm(total=len(todo), desc=f"certify ({certificate})", unit="input", disable=not progress)
    def error_row(k: int, args: dict, message: str) -> dict:  # an input whose task raised on a worker
        return {"idx": indices[k], "label": int(y[k]), "error": message}

    with writer:  # the file's lock is released at the end, whatever happens
        for shard, batch_rows in executor.map(certify_shard, shared, shards(todo, batch_size, **args), error_row):
            writer.write(batch_rows)
            rows += batch_rows
            _rewrite_tsv(out.with_suffix(".tsv"), [r for r in rows if "error" not in r])
            bar.update(len(shard.items))
    bar.close()
    order = {i: k for k, i in enumerate(indices)}
    rows.sort(key=lambda r: order.get(r["idx"], len(order)))  # as certified in one process, whatever finished first
    _rewrite_tsv(out.with_suffix(".tsv"), [r for r in rows if "error" not in r])
    return rows


def certify_shard(shared: dict, items: list[int], n0: int, n: int, alpha: float, certificate: str, seed: int,
                  device: str) -> list[dict]:
    """The rows of the inputs at positions ``items`` (the task function of :func:`certify_dataset`)."""
    smooth, x, y, ids = shared["smooth"], shared["x"], shared["y"], shared["ids"]
    if shared["compile"]:  # a worker compiles once, for every task it runs
        smooth.base, shared["compile"] = CompiledBase(smooth.base), False
    if next(smooth.base.parameters()).device != torch.device(device):
        smooth.base = smooth.base.to(device)
    rows = []
    for k in items:  # one generator per input, on the input's device (the noise is drawn where it is used):
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + ids[k])  # reproducible per device
        t0 = time.perf_counter()
        res = smooth.certify(x[k:k + 1].to(device), n0, n, alpha, certificate, gen)
        pred, radius = int(res.pred[0]), float(np.nan_to_num(res.radius[0], nan=0.0))
        rows.append({"idx": ids[k], "label": int(y[k]), "predict": pred, "radius": radius,
                     "correct": int(pred == int(y[k])), "time": time.perf_counter() - t0,
                     "pa_lower": float(res.pa_lower[0]), "pb_upper": float(res.pb_upper[0]),
                     "counts": res.counts[0].tolist(), "top": int(res.top[0]), "norm": res.norm})
    return rows


def report(rows: list[dict], radii, alpha: float) -> list[dict]:
    """Certified accuracy per radius: approximate, and a high-probability lower bound (a row with an ``error``,
    an input whose task raised, counts as not certified)."""
    radius = np.array([r["radius"] if r.get("predict", -1) >= 0 else np.nan for r in rows])
    correct = np.array([bool(r.get("correct", False)) for r in rows])
    approx = certified_accuracy(radius, correct, radii)
    lower = certified_accuracy_lower(radius, correct, radii, alpha)
    return [{"radius": float(r), "n": len(rows), "certified": float(a), "certified_hp_lower": float(b)}
            for r, a, b in zip(radii, approx, lower)]


def recertify(rows: list[dict], certificate: str, alpha: float, scale: float) -> list[dict]:
    """The rows with radius and prediction recomputed by another ``certificate`` from the same stored counts
    (e.g. Cohen's bound on the counts of a Renyi run: STN's comparison)."""
    if not rows:
        return []
    if any("error" in r for r in rows):
        ok = [r for r in rows if "error" not in r]
        return recertify(ok, certificate, alpha, scale) + [r for r in rows if "error" in r]
    if any("top" not in r or "counts" not in r for r in rows):
        raise ValueError("these rows lack the stored counts or the selected class (written by an older certkit): "
                         "certify again")
    c = np.array([r["counts"] for r in rows], dtype=np.int64)
    top = np.array([r["top"] for r in rows])
    pred, radius, pa, pb = certify_counts(c, top, alpha, certificate, scale)
    return [{**r, "predict": int(p), "radius": float(np.nan_to_num(rad, nan=0.0)), "correct": int(p == r["label"]),
             "pa_lower": float(a), "pb_upper": float(b)} for r, p, rad, a, b in zip(rows, pred, radius, pa, pb)]


def load_results(path: str | Path) -> tuple[dict, list[dict]]:
    """The header (checkpoint, data, noise, σ, certificate, N, α; empty if the file has none) and the rows of
    a results file of ``smooth certify``; anything else is a :class:`~certkit.errors.CertkitError` naming it."""
    from certkit.errors import CertkitError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path} (the .jsonl that `certkit smooth certify` writes)")
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CertkitError(f"{path} is not a JSON-lines results file of `smooth certify` ({e}); give its .jsonl, "
                           "not the .tsv") from None
    header = lines[0] if lines and isinstance(lines[0], dict) and lines[0].get("_header") else {}
    rows = [r for r in lines if isinstance(r, dict) and "idx" in r]
    if any("radius" not in r and "error" not in r for r in rows):
        raise CertkitError(f"{path} holds rows without a radius: not a results file of `smooth certify`")
    return header, rows


def load_rows(path: str | Path) -> list[dict]:
    return load_results(path)[1]


def compare(results: dict[str, list[dict]], radii, alpha: float, lower: bool = False) -> list[dict]:
    """One row per results file (``results``: label → rows): the number of inputs and the certified accuracy
    at each radius (approximate, or with ``lower`` the high-probability lower bound), as in Cohen et al.'s
    tables."""
    out = []
    for label, rows in results.items():
        table = report(rows, radii, alpha)
        key = "certified_hp_lower" if lower else "certified"
        out.append({"model": label, "n": len(rows), **{f"r={t['radius']:g}": t[key] for t in table}})
    return out


def curve(rows: list[dict], points: int = 400) -> tuple[list[float], list[float]]:
    """Approximate certified accuracy on a fine grid of radii from 0 to just past the largest certified one,
    every input's radius among them (a step function: it changes only there)."""
    radius = np.array([r["radius"] if r.get("predict", -1) >= 0 else np.nan for r in rows])
    correct = np.array([bool(r.get("correct", False)) for r in rows])
    certified = radius[correct & ~np.isnan(radius)]
    top = float(certified.max()) * 1.05 if len(certified) and certified.max() > 0 else 1.0
    grid = np.unique(np.concatenate([np.linspace(0.0, top, points), certified]))
    return grid.tolist(), certified_accuracy(radius, correct, grid).tolist()
