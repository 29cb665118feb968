"""The ``certkit`` command: demo, train, certify, attack."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from certkit import __version__


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu, or the config's)")
    p.add_argument("--data-dir", default=None, help="folder holding <dataset>/ (default: $CERTKIT_DATA or a cache)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def _eps_list(values: list[float]) -> list[float]:
    if any(e < 0 for e in values):
        raise SystemExit("error: epsilon must be non-negative")
    return values


def _load_eval_data(args, meta):
    from certkit.data import load_dataset

    name = args.data or meta.get("config", {}).get("data")
    if not name:
        raise SystemExit("error: --data is required (the checkpoint does not name its data set)")
    data = load_dataset(name, "test", args.data_dir)
    data = data.subset(args.start, None if args.n is None else args.start + args.n * args.step, args.step)
    expected = tuple(meta["arch"]["in_shape"])
    if data.shape != expected:
        raise SystemExit(f"error: data set {name} has inputs of shape {data.shape}, the model expects {expected}")
    return data


def cmd_certify(args) -> int:
    from certkit.io import ResultsWriter, load_model
    from certkit.report import format_table, plot_accuracy_vs_eps
    from certkit.verify import certify_dataset, summarize

    model, meta = load_model(args.checkpoint, args.device)
    data = _load_eval_data(args, meta)
    eps_list = _eps_list(args.eps)
    args.batch_size = args.batch_size or (16 if args.method == "crown" else 256)  # CROWN: memory-bound
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"certify-{args.method}-{data.name}.jsonl"
    header = {"checkpoint": str(args.checkpoint), "data": data.name, "method": args.method, "norm": args.norm,
              "pgd_steps": args.pgd_steps, "float64_check": args.float64_check, "certkit_version": __version__}
    writer = ResultsWriter(out, key="key", header=header)
    indices = list(range(args.start, args.start + len(data) * args.step, args.step))
    t0 = time.time()
    rows = certify_dataset(model, data.x, data.y, eps_list, args.method, args.norm, args.pgd_steps,
                           batch_size=args.batch_size, indices=indices, writer=writer, progress=not args.quiet,
                           float64_check=args.float64_check)
    wanted = set(indices)
    rows = [r for r in rows if r["eps"] in eps_list and r["idx"] in wanted]  # the file may hold more
    summary = summarize(rows)
    print(format_table(summary))
    print(f"{len(rows)} results in {out} ({time.time() - t0:.1f} s this run)")
    if args.plot and len(summary) > 1:
        curves = {f"{args.method.upper()}-certified": ([s["eps"] for s in summary], [s["certified"] for s in summary])}
        if all("pgd" in s for s in summary):
            curves["PGD"] = ([s["eps"] for s in summary], [s["pgd"] for s in summary])
        title = f"{Path(args.checkpoint).parent.name} on {data.name} ({len(data)} test inputs)"
        print(f"plot: {plot_accuracy_vs_eps(curves, args.plot, title=title)}")
    return 0


def cmd_attack(args) -> int:
    from certkit.attacks import pgd
    from certkit.io import load_model
    from certkit.report import format_table

    model, meta = load_model(args.checkpoint, args.device)
    data = _load_eval_data(args, meta)
    args.batch_size = args.batch_size or 256
    rows = []
    for eps in _eps_list(args.eps):
        broken = 0
        for i in range(0, len(data), args.batch_size):
            x, y = data.x[i:i + args.batch_size].to(args.device), data.y[i:i + args.batch_size].to(args.device)
            res = pgd(model, x, y, eps, args.norm, args.steps, restarts=args.restarts)
            broken += res.success.sum().item()
        rows.append({"eps": eps, "n": len(data), "pgd_robust_acc": 1 - broken / len(data)})
    print(format_table(rows))
    return 0


def cmd_train(args) -> int:
    from certkit.io import load_config
    from certkit.train import TrainConfig, train

    raw = load_config(args.config)
    cfg = TrainConfig.from_dict(raw)
    for key in ("device", "data_dir", "epochs"):  # command-line values override the config's
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    out = Path(args.out or Path("runs") / cfg.name)
    _, history = train(cfg, out, resume=not args.fresh, progress=not args.quiet)
    last = history[-1] if history else {}
    print(json.dumps(last, indent=1))
    print(f"checkpoint: {out / 'model.safetensors'}")
    return 0


def cmd_demo(args) -> int:
    from certkit.demo import run_demo

    run_demo(out_dir=args.out, device=args.device, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certkit", description="Certified adversarial robustness.")
    p.add_argument("--version", action="version", version=f"certkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="IBP-train a small net on the bundled 8x8 digits, certify it, plot")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=None)
    _add_common(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model from a TOML config (resumes an interrupted run)")
    t.add_argument("--config", required=True)
    t.add_argument("--out", default=None, help="run directory (default: runs/<name>)")
    t.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    t.add_argument("--fresh", action="store_true", help="discard an earlier run in the same directory")
    t.add_argument("--quiet", action="store_true")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    for name, helptext in (("certify", "certify a checkpoint on a test set"), ("attack", "PGD-attack a checkpoint")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--checkpoint", required=True)
        c.add_argument("--data", default=None, help="mnist, fashion-mnist, cifar10, svhn, digits")
        c.add_argument("--eps", type=float, nargs="+", required=True)
        c.add_argument("--norm", default="inf", choices=["inf", "2"])
        c.add_argument("--n", type=int, default=None, help="number of test inputs (default: all)")
        c.add_argument("--start", type=int, default=0)
        c.add_argument("--step", type=int, default=1, help="take every step-th test input")
        c.add_argument("--batch-size", type=int, default=None, help="default: 256 (IBP, PGD), 16 (CROWN)")
        _add_common(c)
        if name == "certify":
            c.add_argument("--method", default="ibp", choices=["ibp", "crown", "crown-ibp"])
            c.add_argument("--pgd-steps", type=int, default=0, help="also run PGD with this many steps")
            c.add_argument("--out", default=None, help="results JSONL (resumed if it exists)")
            c.add_argument("--plot", default=None, help="PNG of accuracy vs eps")
            c.add_argument("--float64-check", action="store_true",
                           help="confirm every certificate again on a float64 copy of the model")
            c.add_argument("--quiet", action="store_true")
            c.set_defaults(func=cmd_certify)
        else:
            c.add_argument("--steps", type=int, default=40)
            c.add_argument("--restarts", type=int, default=1)
            c.set_defaults(func=cmd_attack)
    return p


def main(argv: list[str] | None = None) -> int:
    from certkit.data import DataError
    from certkit.graph import UnsupportedOpError
    from certkit.io import CheckpointError
    from certkit.specs import SpecError

    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.command != "train":
        args.device = args.device or "cpu"
    if (args.device or "").startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (DataError, CheckpointError, SpecError, UnsupportedOpError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
