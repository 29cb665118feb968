"""Run a VNN-COMP benchmark folder and score it the way the competition does.

A benchmark folder holds ``instances.csv`` (rows ``onnx,vnnlib,timeout``; a path ``P`` may be shipped as
``P.gz``) and, optionally, ``ground_truth.csv`` (``onnx,vnnlib,gt,...`` and one column per competition tool,
as in ``../shared/vnncomp``). :func:`run_benchmark` decides the instances in order with the verification
cascade, appending one CSV row per instance as soon as it is decided (flushed and synced, so a killed run loses
at most the instance in progress and resumes without duplicates). Each counterexample is checked as the
scorer does (the ONNX file run by onnxruntime, or by onnx's reference evaluator where onnxruntime is not
installed; one that fails is answered 'unknown') and written in the competition's result format.
:func:`score` counts answers against the ground truth: +10 per correct sat/unsat, −100 per wrong one (the 2021
rules; the competition's time bonuses are not applied), and the same for every tool column.
"""

from __future__ import annotations

import copy
import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from certkit.errors import CertkitError

FIELDS = ["index", "onnx", "vnnlib", "timeout", "answer", "seconds", "counterexample", "note"]
CORRECT, WRONG = 10, -100


@dataclass
class Instance:
    index: int
    onnx: str
    vnnlib: str
    timeout: float


def _file(root: Path, rel: str) -> Path:
    p = root / rel
    if p.exists():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"{root / rel} (nor {gz.name}) does not exist: named in {root / 'instances.csv'}")


def read_instances(root: str | Path) -> list[Instance]:
    """The rows of ``root/instances.csv``."""
    root = Path(root)
    path = root / "instances.csv"
    if not path.exists():
        raise FileNotFoundError(f"no instances.csv in {root}: not a VNN-COMP benchmark folder")
    out = []
    with open(path, newline="") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise CertkitError(f"{path}, row {k + 1}: expected onnx,vnnlib,timeout, got {row}")
            try:
                timeout = float(row[2])
            except ValueError as e:
                raise CertkitError(f"{path}, row {k + 1}: timeout {row[2]!r} is not a number") from e
            out.append(Instance(len(out), row[0].strip(), row[1].strip(), timeout))
    return out


def _normalise(answer: str) -> str:
    """A tool's raw answer as sat/unsat/other (2021 spelling: holds = unsat, violated = sat)."""
    a = (answer or "").strip().lower()
    return {"holds": "unsat", "violated": "sat", "sat": "sat", "unsat": "unsat"}.get(a, a or "no answer")


def _read_rows(path: Path) -> list[dict]:
    """The complete rows of a results CSV; a partial last line (a killed write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    lines = data.decode().splitlines()
    if lines and lines[0].split(",") != FIELDS:
        raise CertkitError(f"{path} is not a certkit vnncomp results file (its first line is not the header "
                           f"{','.join(FIELDS)}); resuming it would duplicate instances; fix it or use another --out")
    rows = list(csv.DictReader(lines))
    return [r for r in rows if r.get("answer")]


def decide_instance(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float, model=None,
                    device: str = "cpu", log=None, **options) -> tuple[str, str, str]:
    """One VNN-COMP instance within ``timeout`` seconds counted from this call (``model``: the network already
    loaded from ``onnx_path``, else it is loaded here, on ``device``). Returns the answer, the result file's
    text (with the counterexample when 'sat') and a note. A counterexample is answered 'sat' only when it passes
    the scorer's check (:func:`~certkit.verify.vnnlib.check_counterexample`); otherwise the answer is 'unknown'
    and the note says why."""
    import torch

    from certkit.onnx_io import load_onnx
    from certkit.verify.vnnlib import check_counterexample, format_result, read_vnnlib, verify_vnnlib

    t0 = time.perf_counter()
    model = load_onnx(onnx_path).to(device) if model is None else model
    props = read_vnnlib(vnnlib_path)
    left = max(timeout - (time.perf_counter() - t0), 0.0)
    if log is not None:
        log(f"loaded in {time.perf_counter() - t0:.1f} s: {len(props)} input box(es), {left:.0f} s left")
    answer, x = verify_vnnlib(model, props, model.input_shape, timeout=left, log=log, **options)
    note = ""
    if answer == "sat":  # checked as the scorer does: the ONNX file run by onnxruntime
        with torch.no_grad():
            y = copy.deepcopy(model).double()(x.double())
        why = check_counterexample(onnx_path, props, x.detach().cpu(), y.cpu())
        if why is not None:
            answer, x, note = "unknown", None, f"counterexample rejected: {why}"
    if answer == "unknown" and time.perf_counter() - t0 >= timeout:
        answer = "timeout"
    return answer, format_result(answer, model, x), note


def run_benchmark(root: str | Path, out: str | Path, timeout_scale: float = 1.0, instances: int | None = None,
                  device: str = "cpu", progress: Callable[[str], None] | None = print, every: int = 1,
                  executor=None, **options) -> list[dict]:
    """Decide the first ``instances`` instances of the benchmark in ``root`` (all by default; with ``every`` = k,
    every k-th of them, a sample that spreads over the networks and properties), each within its
    timeout times ``timeout_scale`` (counted from the start of loading its files), appending rows to the CSV
    ``out``; instances already there are skipped. Counterexamples go to ``<out stem>_cex/``. Returns all rows.
    With an :class:`~certkit.parallel.Executor` that has workers, each instance is one Ray task (every node must
    see ``root`` at the same path) and rows are appended as instances finish."""
    from certkit.parallel import Executor, Shard

    executor = executor or Executor()
    root, out = Path(root), Path(out)
    todo = read_instances(root)[:instances][::every]
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _read_rows(out)
    done = {int(r["index"]) for r in rows}
    cex_dir = out.with_name(out.stem + "_cex")
    new = not out.exists() or out.stat().st_size == 0
    work = [Shard([inst], {"root": str(root), "scale": timeout_scale, "device": device, "options": options})
            for inst in todo if inst.index not in done]
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        for _, [(row, text)] in executor.map(decide_shard, {"models": {}}, work, _error_row):
            if row["answer"] == "sat":
                cex_dir.mkdir(exist_ok=True)
                p = cex_dir / f"{row['index']:04d}.txt"
                p.write_text(text)
                row["counterexample"] = str(p)
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
            rows.append({k: str(v) for k, v in row.items()})
            if progress:
                progress(f"{row['index']:4d} {Path(row['onnx']).stem[:34]:34s} {Path(row['vnnlib']).stem[:28]:28s} "
                         f"{row['answer']:8s} {row['seconds']:>7s} s" + (f"  {row['note']}" if row["note"] else ""))
    return rows


def _error_row(inst: Instance, args: dict, message: str) -> tuple[dict, str]:
    """The row of an instance whose task raised on a worker: answered 'error', the reason in its note."""
    budget = inst.timeout * args["scale"]
    return {"index": inst.index, "onnx": inst.onnx, "vnnlib": inst.vnnlib, "timeout": f"{budget:g}",
            "answer": "error", "seconds": "0.00", "counterexample": "", "note": message[:300]}, ""


def decide_shard(shared: dict, items: list[Instance], root: str, scale: float, device: str,
                 options: dict) -> list[tuple[dict, str]]:
    """The results row (and result file text) of each instance in ``items``, each within its timeout times
    ``scale``; the networks are loaded once per process (``shared['models']``). An instance that fails to load
    or raises is answered 'error' with the reason in its note; the run goes on."""
    from certkit.onnx_io import load_onnx

    models = shared["models"]
    out = []
    for inst in items:
        budget = inst.timeout * scale
        t0 = time.perf_counter()
        answer, text, note = "error", "", ""
        try:
            net_path = _file(Path(root), inst.onnx)
            if net_path not in models:
                models[net_path] = load_onnx(net_path).to(device)
            left = budget - (time.perf_counter() - t0)
            answer, text, note = decide_instance(net_path, _file(Path(root), inst.vnnlib), left, models[net_path],
                                                 **options)
        except (CertkitError, OSError, ValueError, RuntimeError) as e:  # the instance ends, the run goes on
            note = f"{type(e).__name__}: {e}"[:300]
        seconds = time.perf_counter() - t0
        if answer == "unknown" and seconds >= budget:
            answer = "timeout"
        out.append(({"index": inst.index, "onnx": inst.onnx, "vnnlib": inst.vnnlib, "timeout": f"{budget:g}",
                     "answer": answer, "seconds": f"{seconds:.2f}", "counterexample": "", "note": note}, text))
    return out


@dataclass
class Score:
    """Counts of one tool over a set of instances: answers, correct and wrong ones against the ground truth,
    the score (+10 / −100), and the seconds spent on the decided instances (certkit only)."""

    name: str
    sat: int = 0
    unsat: int = 0
    other: int = 0
    correct: int = 0
    wrong: int = 0
    seconds: float = 0.0

    @property
    def decided(self) -> int:
        return self.sat + self.unsat

    @property
    def points(self) -> int:
        return CORRECT * self.correct + WRONG * self.wrong


def score(rows: list[dict], root: str | Path) -> tuple[Score, list[Score], list[dict]]:
    """certkit's score on ``rows``, every competition tool's on the same instances (from ground_truth.csv, when
    the folder has one), and the rows whose answer contradicts the ground truth."""
    truth_path = Path(root) / "ground_truth.csv"
    truth = list(csv.DictReader(open(truth_path, newline=""))) if truth_path.exists() else []
    tools = [c for c in (truth[0].keys() if truth else []) if c not in ("onnx", "vnnlib", "gt", "gt_source", "timeout")]
    ours = Score("certkit")
    theirs = {t: Score(t) for t in tools}
    wrong_rows = []
    for r in rows:
        i = int(r["index"])
        gt = _normalise(truth[i]["gt"]) if i < len(truth) else "unknown"
        for name, answer, sc in [("certkit", r["answer"], ours)] + [(t, truth[i][t], theirs[t]) for t in tools
                                                                      if i < len(truth)]:
            a = _normalise(answer)
            if a in ("sat", "unsat"):
                setattr(sc, a, getattr(sc, a) + 1)
                if name == "certkit":
                    sc.seconds += float(r["seconds"])
                if gt in ("sat", "unsat"):
                    if a == gt:
                        sc.correct += 1
                    else:
                        sc.wrong += 1
                        if name == "certkit":
                            wrong_rows.append(r)
            else:
                sc.other += 1
    return ours, list(theirs.values()), wrong_rows


def score_table(rows: list[dict], root: str | Path) -> str:
    """A plain-text table of :func:`score`, certkit first, then the tools by points."""
    ours, theirs, wrong = score(rows, root)
    lines = [f"{len(rows)} instances of {Path(root).name}; +{CORRECT} per correct, {WRONG} per wrong answer "
             "(no time bonuses)",
             f"{'tool':20s} {'decided':>7s} {'sat':>5s} {'unsat':>5s} {'correct':>7s} {'wrong':>5s} {'score':>6s}"]
    for sc in [ours] + sorted(theirs, key=lambda s: -s.points):
        lines.append(f"{sc.name:20s} {sc.decided:7d} {sc.sat:5d} {sc.unsat:5d} {sc.correct:7d} {sc.wrong:5d} "
                     f"{sc.points:6d}")
    if ours.decided:
        lines.append(f"certkit: {ours.seconds / ours.decided:.1f} s per decided instance")
    for r in wrong:
        lines.append(f"CONTRADICTION: instance {r['index']} ({r['onnx']}, {r['vnnlib']}) answered {r['answer']}")
    return "\n".join(lines)
