"""The ``certkit`` command: demo, train, certify, radius, attack, verify."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from certkit import __version__

# Choices named before torch is imported (so that --help and a typo answer at once); tests check them against
# certkit.smoothing.smooth.RULES, certkit.verify.cascade.METHODS and certkit.verify.certify.COMPLETE.
CERTIFICATES = ("cohen", "cohen2", "renyi", "pixeldp", "laplace", "laplace1", "uniform")
BOUND_METHODS = ("ibp", "crown", "crown-ibp", "alpha")
COMPLETE_METHODS = ("bab", "milp", "cascade")


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, unless the help already says it or there is none (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d == [] or d is argparse.SUPPRESS:
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """certkit's argument parser: every option's default in its help, and a "did you mean" for a mistyped
    option or sub-command."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        import difflib
        import re

        bad = re.search(r"unrecognized arguments: (\S+)", message) or re.search(r"invalid choice: '([^']+)'", message)
        if bad:
            word = bad.group(1).split("=")[0]
            known = [o for a in self._actions for o in a.option_strings]
            known += [c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]
            known += [c for a in self._actions if a.choices and not isinstance(a, argparse._SubParsersAction)
                      for c in a.choices if isinstance(c, str)]
            close = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
            if close:
                message += f" (did you mean {' or '.join(close)}?)"
        super().error(message)


def _add_common(p: argparse.ArgumentParser, config: bool = False, data: bool = True) -> None:
    """The options every command has: --device, --threads, --quiet, --seed (and --data-dir where data is read)."""
    where = "cpu, or the config's" if config else "cpu"
    p.add_argument("--device", default=None, help=f"torch device, e.g. cpu or cuda (default: {where})")
    if data:
        p.add_argument("--data-dir", default=None,
                       help="folder holding <dataset>/ (default: $CERTKIT_DATA or a cache)")
    if "--quiet" not in p._option_string_actions:
        p.add_argument("--quiet", action="store_true", help="no progress output")
    if not config and "--seed" not in p._option_string_actions:  # training seeds from its config ([train] seed)
        p.add_argument("--seed", type=int, default=None, help="seed of torch's random draws (PGD starts, sampling)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (with --workers: per worker, default 1)")


def _add_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the inputs on a local Ray runtime with N worker processes, --threads torch threads "
                        "each (default 1); needs pip install 'certkit[ray]' (default: in this process)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="run on the Ray cluster at ADDR instead ('auto': the one `ray start` made here; "
                        "ray://HEAD:10001 for a remote head)")


def _executor(args):
    """The :class:`~certkit.parallel.Executor` of ``--workers/--address`` (in this process without them)."""
    from certkit.parallel import Executor

    workers, address = getattr(args, "workers", None), getattr(args, "address", None)
    gpus = 0.0
    if (workers or address) and str(args.device).startswith("cuda"):
        gpus = 1.0 / (workers or 1)  # the workers share the GPUs
    return Executor(workers, address, threads=args.threads or 1, gpus=gpus)


def _said(executor) -> None:
    """On stderr: where the tasks ran (nodes and tasks per node), for a run on Ray."""
    if executor.distributed and executor.tasks_per_node:
        nodes = ", ".join(f"{n[:8]}: {c}" for n, c in sorted(executor.tasks_per_node.items()))
        print(f"ran on {executor.describe()}; tasks per node: {nodes}", file=sys.stderr)


def _eps_list(values: list[float]) -> list[float]:
    if any(e < 0 for e in values):
        raise SystemExit("error: epsilon must be non-negative")
    return values


def _load_eval_data(args, meta):
    from certkit.data import load_dataset

    trained_on = (meta.get("config") or {}).get("data")
    name = args.data or trained_on
    if not name:
        raise SystemExit("error: --data is required (the checkpoint does not name its data set)")
    if trained_on and name != trained_on:
        print(f"warning: {args.checkpoint} was trained on {trained_on}, evaluated here on {name}", file=sys.stderr)
    data = load_dataset(name, "test", args.data_dir)
    count = args.count  # images are --count everywhere; 'smooth' uses --n for noise draws (Cohen's N)
    data = data.subset(args.start, None if count is None else args.start + count * args.step, args.step)
    expected = tuple(meta["arch"]["in_shape"])
    if data.shape != expected:
        raise SystemExit(f"error: data set {name} has inputs of shape {data.shape}, the model expects {expected}")
    return data


def _load_any(args):
    """A certkit checkpoint, or an ONNX network (``--mean/--std`` put a Normalize layer in front of it)."""
    import torch

    from certkit.io import load_model

    path = str(args.checkpoint)
    if path.endswith((".onnx", ".onnx.gz")):
        from certkit.nn import Normalize
        from certkit.onnx_io import load_onnx

        net = load_onnx(path)
        if args.mean is None and args.std is None:
            print(f"warning: {path} is an ONNX network and no --mean/--std was given: it gets pixels in [0, 1] "
                  "as they are; if it expects normalised inputs, give --mean and --std (COLT's MNIST net: --mean "
                  "0.1307 --std 0.3081)", file=sys.stderr)
        if args.mean is not None or args.std is not None:
            c = net.input_shape[1] if len(net.input_shape) > 1 else 1
            mean, std = args.mean or [0.0] * c, args.std or [1.0] * c
            net = torch.nn.Sequential(Normalize(mean, std), net).eval()
        meta = {"arch": {"in_shape": list(load_onnx(path).input_shape[1:])}}
        return net.to(args.device), meta
    return load_model(path, args.device)


def _default_out(args, filename: str) -> Path:
    """Where results go without ``--out``: beside a checkpoint that lives under ./runs (a training run's folder),
    else in runs/<checkpoint name>/ (never into a folder of released or shared models). Said on stderr."""
    ck = Path(str(args.checkpoint))
    runs = Path("runs").resolve()
    name = ck.name
    for suffix in (".gz", ".onnx", ".safetensors", ".pt"):
        name = name.removesuffix(suffix)
    folder = ck.parent if runs in ck.resolve().parents else Path("runs") / name
    out = folder / filename
    print(f"results: {out}", file=sys.stderr)
    return out


def _options(args) -> dict:
    return {k: v for k, v in {"timeout": getattr(args, "timeout", None),
                              "max_binaries": getattr(args, "max_binaries", None),
                              "iterations": getattr(args, "iterations", None)}.items() if v is not None}


def cmd_certify(args) -> int:
    from certkit.io import ResultsWriter
    from certkit.report import format_table, plot_accuracy_vs_eps
    from certkit.verify import certify_dataset, stage_summary, summarize

    model, meta = _load_any(args)
    data = _load_eval_data(args, meta)
    eps_list = _eps_list(args.eps)
    on_ray = args.workers or args.address  # the cascade's tasks stay short: 20 inputs each
    per_method = {"crown": 16, "alpha": 32, "bab": 16, "milp": 16, "cascade": 20 if on_ray else 100}
    args.batch_size = args.batch_size or per_method.get(args.method, 256)
    out = Path(args.out) if args.out else _default_out(args, f"certify-{args.method}-{data.name}.jsonl")
    header = {"checkpoint": str(args.checkpoint), "data": data.name, "method": args.method, "norm": args.norm,
              "pgd_steps": args.pgd_steps, "float64_check": args.float64_check, **_options(args),
              "certkit_version": __version__}
    writer = ResultsWriter(out, key="key", header=header)
    indices = list(range(args.start, args.start + len(data) * args.step, args.step))
    t0 = time.time()
    with writer, _executor(args) as executor:
        rows = certify_dataset(model, data.x, data.y, eps_list, args.method, args.norm, args.pgd_steps,
                               batch_size=args.batch_size, indices=indices, writer=writer, progress=not args.quiet,
                               float64_check=args.float64_check, executor=executor, **_options(args))
        _said(executor)
    wanted = set(indices)
    rows = [r for r in rows if r["eps"] in eps_list and r["idx"] in wanted]  # the file may hold more
    summary = summarize(rows)
    print(format_table(summary))
    stages = stage_summary(rows)
    if stages:
        print(format_table(stages))
    print(f"{len(rows)} results in {out} ({time.time() - t0:.1f} s this run)")
    if args.plot and len(summary) < 2:
        print("plot skipped: a curve needs two or more radii (--eps A B ...)", file=sys.stderr)
    elif args.plot:
        curves = {f"{args.method.upper()}-certified": ([s["eps"] for s in summary], [s["certified"] for s in summary])}
        if all("pgd" in s for s in summary):
            curves["PGD"] = ([s["eps"] for s in summary], [s["pgd"] for s in summary])
        title = f"{Path(args.checkpoint).parent.name} on {data.name} ({len(data)} test inputs)"
        print(f"plot: {plot_accuracy_vs_eps(curves, args.plot, title=title)}")
    return 0


def cmd_radius(args) -> int:
    import statistics

    from certkit.io import ResultsWriter
    from certkit.verify import radius_dataset

    model, meta = _load_any(args)
    data = _load_eval_data(args, meta)
    out = Path(args.out) if args.out else _default_out(args, f"radius-{args.method}-{data.name}.jsonl")
    header = {"checkpoint": str(args.checkpoint), "data": data.name, "method": args.method, "norm": args.norm,
              "hi": args.hi, "tol": args.tol, **_options(args), "certkit_version": __version__}
    writer = ResultsWriter(out, key="idx", header=header)
    indices = list(range(args.start, args.start + len(data) * args.step, args.step))
    bs = args.batch_size or {"crown": 16, "alpha": 32, "bab": 4, "milp": 4, "cascade": 16}.get(args.method, 256)
    with writer, _executor(args) as executor:
        radius_dataset(model, data.x, data.y, args.method, args.norm, args.hi, args.tol, bs, indices, writer,
                       progress=not args.quiet, executor=executor, **_options(args))
        _said(executor)
    wanted = set(indices)
    radii = [row["radius"] for row in writer.results if row["idx"] in wanted and "error" not in row]
    errors = sum("error" in row for row in writer.results if row["idx"] in wanted)
    if errors:
        print(f"{errors} inputs raised (rows with an 'error' field in {out})", file=sys.stderr)
    print(f"{len(radii)} inputs, {args.method} max certified L{args.norm} radius: mean {statistics.mean(radii):.4f}, "
          f"median {statistics.median(radii):.4f}, max {max(radii):.4f} (0 = misclassified or not certified)")
    print(f"results: {out}")
    return 0


def cmd_verify(args) -> int:
    from certkit.verify.vnncomp import decide_instance

    t0 = time.perf_counter()
    def log(line: str) -> None:  # the stages as they finish, on stderr (stdout is the answer alone)
        print(line, file=sys.stderr, flush=True)

    answer, text, note = decide_instance(args.onnx, args.vnnlib, args.timeout, device=args.device or "cpu",
                                         log=None if args.quiet else log, max_binaries=args.max_binaries)
    print(answer)
    if not args.quiet:
        print(f"{time.perf_counter() - t0:.1f} s" + (f"; {note}" if note else ""), file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_vnncomp(args) -> int:
    from certkit.verify.vnncomp import run_benchmark, score_table

    out = Path(args.out) if args.out else Path("runs") / "vnncomp" / f"{Path(args.bench).resolve().name}.csv"
    print(f"results: {out}", file=sys.stderr)
    with _executor(args) as executor:
        rows = run_benchmark(args.bench, out, args.timeout_scale, args.instances, args.device or "cpu",
                             progress=None if args.quiet else print, every=args.every, executor=executor,
                             max_binaries=args.max_binaries)
        _said(executor)
    table = score_table(rows, args.bench)
    print(table)
    out.with_suffix(".score.txt").write_text(table + "\n")
    return 0


def cmd_smooth(args) -> int:
    import torch

    from certkit.report import format_table
    from certkit.smoothing import CompiledBase, Noise, Smooth
    from certkit.smoothing.run import certify_dataset, report

    if args.action == "report":
        return _smooth_report(args)
    model, meta = _load_any(args)
    _smoothing_noise(args, meta)
    data = _load_eval_data(args, meta)
    if len(data.shape) == 3:  # images: channels-last convolutions are 2-4x faster on CPU (smoothing_speed.py)
        model = model.to(memory_format=torch.channels_last)
    batch = args.batch_size or (250 if str(args.device).startswith("cpu") else 1000)
    base = CompiledBase(model) if getattr(args, "compile", False) else model
    smooth = Smooth(base, data.num_classes, Noise(args.noise, args.sigma), batch)
    indices = list(range(args.start, args.start + len(data) * args.step, args.step))
    if args.action == "attack":
        import argparse as _argparse

        from certkit.attacks import pgd
        from certkit.attacks import smoothed as sa
        from certkit.attacks.boundary import boundary_attack

        if (args.attack == "transfer") != bool(args.source):
            raise SystemExit("error: --attack transfer takes --source (the model the attack is crafted on), and "
                             "--source goes with --attack transfer")
        source = _load_any(_argparse.Namespace(**{**vars(args), "checkpoint": args.source}))[0] if args.source \
            else None
        gen = torch.Generator().manual_seed(args.seed)
        x, y = data.x.to(args.device), data.y.to(args.device)
        broken = 0
        for i in range(0, len(y), 50):
            xb, yb = x[i:i + 50], y[i:i + 50]

            def within(xa, xb=xb):  # points beyond the radius (in --norm) do not count: the input stays
                dist = (xa - xb).flatten(1).norm(p=float("inf") if args.norm == "inf" else 2.0, dim=1)
                return torch.where((dist <= args.eps).view(-1, *[1] * (xb.dim() - 1)), xa, xb)
            attack = {
                "smoothadv-pgd": lambda: sa.smoothadv_pgd(model, xb, yb, args.eps, args.sigma, args.m, args.steps,
                                                          generator=gen, noise=args.noise),
                "smoothadv-ddn": lambda: sa.smoothadv_ddn(model, xb, yb, args.eps, args.sigma, args.m, args.steps,
                                                          generator=gen, noise=args.noise),
                "eot-pgd": lambda: sa.eot_pgd(model, xb, yb, args.eps, args.sigma, args.m, args.steps,
                                              noise=args.noise, generator=gen),
                "eot-cw": lambda: sa.eot_cw(model, xb, yb, args.sigma, samples=args.m, steps=args.steps,
                                            noise=args.noise, generator=gen),
                # decision-based: the smoothed classifier's majority vote over --m draws is all it sees
                "boundary": lambda: within(boundary_attack(lambda z: sa.vote(model, z, args.sigma, args.m, args.noise,
                                                                             gen), xb, yb,
                                                           steps=args.boundary_steps, generator=gen).x_adv),
                "transfer": lambda: pgd(source, xb, yb, args.eps, args.norm, args.steps).x_adv,
            }[args.attack]
            xa = attack()
            broken += int((sa.vote(model, xa, args.sigma, args.n, args.noise, gen) != yb).sum())
        print(f"{len(y)} inputs, {args.attack} at eps={args.eps}: smoothed accuracy under attack "
              f"{1 - broken / len(y):.4f} (majority of {args.n} draws)")
        return 0
    if args.action == "predict":
        gen = torch.Generator().manual_seed(args.seed)
        pred = smooth.predict(data.x.to(args.device), args.n, args.alpha, gen)
        acc = float((pred == data.y.numpy()).mean())
        print(f"{len(pred)} inputs: accuracy {acc:.4f}, abstained {float((pred < 0).mean()):.4f}")
        return 0
    out = Path(args.out or _default_out(args, f"smooth-{args.noise}-{args.sigma}-{args.certificate}"))
    header = {"checkpoint": str(args.checkpoint), "data": data.name, "noise": args.noise, "sigma": args.sigma,
              "certificate": args.certificate, "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed,
              "certkit_version": __version__}
    if args.certificate in ("cohen", "cohen2"):  # what N draws can reach at most, said before the hours it takes
        from certkit.smoothing.smooth import max_certifiable_radius

        reach = max_certifiable_radius(smooth.noise, args.n, args.alpha)
        beyond = [r for r in args.radii if r > reach]
        if beyond:
            print(f"warning: with N = {args.n} draws (α = {args.alpha}) no radius above {reach:.3f} can be certified "
                  f"({args.noise} σ = {args.sigma}): the rows for {', '.join(f'{r:g}' for r in beyond)} will be 0; "
                  "raise --n to reach them", file=sys.stderr)
    with _executor(args) as executor:
        rows = certify_dataset(smooth, data.x.to(args.device), data.y, indices, args.n0, args.n, args.alpha,
                               args.certificate, out, header, batch_size=args.shard, seed=args.seed,
                               progress=not args.quiet, executor=executor, compile=args.compile)
        _said(executor)
    wanted = set(indices)
    rows = [r for r in rows if r["idx"] in wanted]
    print(format_table(report(rows, args.radii, args.alpha)))
    print(f"{len(rows)} rows in {out.with_suffix('.tsv')} and {out.with_suffix('.jsonl')}")
    return 0


def _smooth_report(args) -> int:
    """``smooth report``: one results file gives certified accuracy per radius (approximate and the
    high-probability lower bound); several give one row per file (Cohen et al.'s tables). ``--format`` picks
    Markdown, LaTeX or TSV, ``--table`` writes it to a file too; ``--plot`` draws every file's certified accuracy
    as a step curve over a fine grid of radii."""
    from certkit.report import format_table, plot_accuracy_vs_eps
    from certkit.smoothing.run import compare, curve, load_results, recertify, report

    labels = args.labels or []
    if labels and len(labels) != len(args.results):
        raise SystemExit(f"error: --labels gives {len(labels)} names for {len(args.results)} results files")
    runs, headers = {}, []
    for k, path in enumerate(args.results):
        header, rows = load_results(path)
        if args.recertify:  # the σ each file was certified with, from its header
            sigma = args.sigma if args.sigma is not None else header.get("sigma")
            if sigma is None:
                raise SystemExit(f"error: {path} records no sigma; give --sigma to recertify it")
            rows = recertify(rows, args.recertify, args.alpha, sigma)
        label = labels[k] if labels else _run_label(path, header, args.recertify)
        if label in runs:
            label = f"{label} ({Path(path).stem})"
        runs[label] = rows
        headers.append(header)
    if len(runs) == 1:
        table = report(next(iter(runs.values())), args.radii, args.alpha)
    else:
        table = compare(runs, args.radii, args.alpha)
    text = format_table(table, style=args.format)
    print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text + "\n")
        print(f"table: {args.table}", file=sys.stderr)
    if args.plot:
        norms = {r.get("norm", "2") for rows in runs.values() for r in rows if "error" not in r}
        data = {h.get("data") for h in headers if h.get("data")}
        n = {len(rows) for rows in runs.values()}
        title = f"certified accuracy of smoothed classifiers on {', '.join(sorted(data)) or 'the test set'}" + (
            f" ({n.pop()} inputs)" if len(n) == 1 else "")
        xlabel = f"radius (L{'/L'.join(sorted(str(v) for v in norms)) or '2'})"
        curves = {label: curve(rows) for label, rows in runs.items()}
        print(f"plot: {plot_accuracy_vs_eps(curves, args.plot, title=title, xlabel=xlabel, step=True)}")
    return 0


def _run_label(path: str, header: dict, recertified: str | None) -> str:
    """A legend label from a results file's header: the model's run folder, noise, σ, N and certificate."""
    ck = Path(str(header.get("checkpoint", path)))
    name = ck.parent.name if ck.name in ("model.safetensors", "model.onnx") else ck.stem
    parts = [name or Path(path).stem]
    if "sigma" in header:
        parts.append(f"{header.get('noise', 'gaussian')} σ={header['sigma']:g}")
    if "n" in header:
        parts.append(f"N={header['n']:,}")
    cert = recertified or header.get("certificate")
    if cert:
        parts.append(cert)
    return ", ".join(parts)


def _smoothing_noise(args, meta: dict) -> None:
    """``--noise`` and ``--sigma`` default to the noise the checkpoint was trained with (gaussian, stability and
    SmoothAdv training record it); a different noise or scale than the training's is allowed but said.
    ``--certificate`` defaults to the noise's first (cohen, laplace, uniform)."""
    from certkit.train.config import trained_noise

    trained = trained_noise(meta.get("config") or {})
    if args.noise is None:
        args.noise = trained.kind if trained is not None else "gaussian"
    if args.sigma is None:
        if trained is None:
            raise SystemExit(f"error: certkit smooth {args.action} needs --sigma: {args.checkpoint} records no "
                             "training noise")
        if args.noise != trained.kind:
            raise SystemExit(f"error: {args.checkpoint} was trained with {trained.kind} noise; give --sigma for "
                             f"{args.noise} noise")
        args.sigma = trained.scale
        print(f"{args.noise} noise of scale {trained.scale} (the checkpoint's training noise)", file=sys.stderr)
    elif trained is not None and (args.sigma != trained.scale or args.noise != trained.kind):
        print(f"warning: {args.checkpoint} was trained with {trained.kind} noise of scale {trained.scale}; "
              f"smoothing with {args.noise} noise of scale {args.sigma}", file=sys.stderr)
    if args.certificate is None:
        from certkit.smoothing.smooth import CERTIFICATES

        args.certificate = CERTIFICATES[args.noise][0]


def _need(args, **required) -> None:
    """A clear error for an option that the chosen action needs."""
    for name, flag in required.items():
        if getattr(args, name, None) is None:
            raise SystemExit(f"error: certkit {args.command} {args.action} needs {flag}")


def cmd_vae(args) -> int:
    from certkit.data import load_dataset
    from certkit.generative.train import VAEConfig, evaluate_vae, load_vae, save_images, train_vae
    from certkit.io import apply_overrides, load_config
    from certkit.report import format_table

    _need(args, **({"config": "--config"} if args.action == "train" else {"checkpoint": "--checkpoint"}))
    if args.action == "train":
        cfg = VAEConfig.from_dict(apply_overrides(load_config(args.config), args.set))
        for key in ("device", "data_dir", "epochs"):  # command-line values override the config's
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
        out = Path(args.out or Path("runs") / cfg.name)
        _, history = train_vae(cfg, out, resume=not args.fresh, progress=not args.quiet, until=args.until)
        print(json.dumps(history[-1] if history else {}, indent=1))
        print(f"checkpoint: {out / 'model.safetensors'}")
        return 0
    vae, meta = load_vae(args.checkpoint, args.device)
    data = load_dataset(args.data or meta["config"]["data"], "test", args.data_dir).subset(0, args.count)
    x = data.x.to(args.device)
    eps_bound = meta["config"]["eps"] if args.eps_bound is None else args.eps_bound
    res = evaluate_vae(vae, x, eps_bound, args.attack_eps, attack_steps=args.pgd_steps, crown=args.crown)
    d = x[0].numel()
    rows = [{"quantity": k, "per image": v, "per pixel": v / d} for k, v in res.items()]
    print(f"{Path(args.checkpoint).parent.name}: {len(x)} test images, certified bound at eps={eps_bound}")
    print(format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": str(args.checkpoint), "n": len(x),
                                              "eps_bound": eps_bound, **res}) + "\n")
    if args.images:
        print(f"images: {save_images(vae, x[:10], max(args.attack_eps), args.images)}")
    return 0


def cmd_bayes(args) -> int:
    from certkit.bayes import run
    from certkit.data import load_dataset
    from certkit.io import apply_overrides, load_config
    from certkit.report import format_table

    _need(args, **({"config": "--config"} if args.action == "train" else {"run": "--run"}))
    from certkit.bayes import inference

    inference.PROGRESS["show"] = not args.quiet
    if args.action == "train":
        cfg = run.read_config(apply_overrides(load_config(args.config), args.set))
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
        out = Path(args.out or Path("runs") / cfg["name"])
        if (out / "posterior.safetensors").exists() and not args.fresh:  # inference is one step: done or not
            print(f"{out} holds a finished run already (--fresh to run it again): certkit bayes eval --run {out}")
            return 0
        print(f"run: {out}", file=sys.stderr)
        model, post, seconds = run.run_inference(cfg, args.data_dir, cache_dir=out.parent / ".warm-start",
                                                 device=args.device or "cpu")
        run.save_run(out, cfg, post, seconds)
        print(f"{cfg['method']} with the {cfg['likelihood']} likelihood: {len(post.samples)} weight samples in "
              f"{seconds:.0f} s -> {out / 'posterior.safetensors'}")
        return 0
    model, post, cfg = run.load_run(Path(args.run), args.device)
    data = load_dataset(args.data or cfg["data"], "test", args.data_dir).subset(0, args.count)
    x, y = data.x.to(args.device), data.y.to(args.device)
    with _executor(args) as executor:
        res = run.evaluate(model, post, x, y, args.eps, tuple(args.methods), args.pgd_steps, executor=executor,
                           progress=not args.quiet)
        _said(executor)
    if args.ood:
        ood = load_dataset(args.ood, "test", args.data_dir).subset(0, args.count)
        h_in, h_out = run.predictive_entropy(post, x), run.predictive_entropy(post, ood.x.to(args.device))
        h_in, h_out = h_in.cpu(), h_out.cpu()
        res.update(entropy_in=float(h_in.mean()), entropy_out=float(h_out.mean()), ood_auroc=run.auroc(h_in, h_out))
    res = {"method": cfg["method"], "likelihood": cfg["likelihood"], **res,
           "train_seconds": cfg.get("train_seconds"), "info": cfg.get("info", {})}
    print(format_table([{k: v for k, v in res.items() if k != "info"}]))
    if args.out:
        if args.ood:  # the entropies themselves, for histograms (the paper's Fig. 3)
            res.update(entropies_in=[round(float(h), 4) for h in h_in],
                       entropies_out=[round(float(h), 4) for h in h_out])
        Path(args.out).write_text(json.dumps(res) + "\n")
    return 0


def cmd_attack(args) -> int:
    """PGD (white-box), the Boundary Attack (decision-based) or a transfer attack (PGD on --source, evaluated on
    --checkpoint): robust accuracy per radius, and with --out one row per (radius, input)."""
    import argparse as _argparse

    import torch
    from tqdm import tqdm

    from certkit.attacks import pgd
    from certkit.attacks.boundary import boundary_attack
    from certkit.report import format_table

    model, meta = _load_any(args)
    data = _load_eval_data(args, meta)
    if args.method == "transfer" and not args.source:
        raise SystemExit("error: --method transfer needs --source (the model the attack is crafted on)")
    source = _load_any(_argparse.Namespace(**{**vars(args), "checkpoint": args.source}))[0] if args.source else None
    if source is not None and args.method != "transfer":
        raise SystemExit("error: --source is for --method transfer")
    args.batch_size = args.batch_size or 256
    eps_list = _eps_list(args.eps)
    p = float("inf") if args.norm == "inf" else 2.0
    rows = []
    for i in tqdm(range(0, len(data), args.batch_size), desc=args.method, unit="batch", leave=False,
                  disable=args.quiet):
        x, y = data.x[i:i + args.batch_size].to(args.device), data.y[i:i + args.batch_size].to(args.device)
        idx = list(range(args.start + i * args.step, args.start + (i + len(y)) * args.step, args.step))
        if args.method == "boundary":  # one run per input: its distance decides every radius
            def classify(z):
                return model(z).argmax(1)

            r = boundary_attack(classify, x, y, steps=args.boundary_steps)
            dist = (r.x_adv - x).flatten(1).norm(p=p, dim=1)
            for eps in eps_list:
                broken = r.success & (dist <= eps + 1e-12)
                rows += [{"key": f"{eps}:{k}", "idx": k, "eps": eps, "label": int(y[j]), "robust": not bool(broken[j]),
                          "distance": float(dist[j]) if r.success[j] else None} for j, k in enumerate(idx)]
            continue
        for eps in eps_list:
            crafted_on = source if source is not None else model
            res = pgd(crafted_on, x, y, eps, args.norm, args.pgd_steps, restarts=args.restarts)
            with torch.no_grad():
                broken = model(res.x_adv).argmax(1) != y
            rows += [{"key": f"{eps}:{k}", "idx": k, "eps": eps, "label": int(y[j]), "robust": not bool(broken[j])}
                     for j, k in enumerate(idx)]
    table = [{"eps": eps, "n": len(data), f"{args.method}_robust_acc":
              sum(r["robust"] for r in rows if r["eps"] == eps) / len(data)} for eps in eps_list]
    print(format_table(table))
    if args.out:
        header = {"_header": True, "target": str(args.checkpoint), "source": args.source, "method": args.method,
                  "norm": args.norm, "pgd_steps": args.pgd_steps, "data": data.name, "certkit_version": __version__}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
        print(f"results: {args.out}")
    return 0


def cmd_train(args) -> int:
    from certkit.io import apply_overrides, load_config
    from certkit.train import TrainConfig, train

    raw = apply_overrides(load_config(args.config), args.set)
    cfg = TrainConfig.from_dict(raw)
    for key in ("device", "data_dir", "epochs"):  # command-line values override the config's
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    out = Path(args.out or Path("runs") / cfg.name)
    _, history = train(cfg, out, resume=not args.fresh, progress=not args.quiet, until=args.until)
    last = history[-1] if history else {}
    print(json.dumps(last, indent=1))
    print(f"checkpoint: {out / 'model.safetensors'}")
    return 0


def cmd_configs(args) -> int:
    """The shipped configs by name, with the first line of each one's comment (``--config NAME`` takes them)."""
    from certkit.io import CONFIGS

    for path in sorted(CONFIGS.glob("*.toml")):
        if args.filter and args.filter not in path.stem:
            continue
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        print(f"{path.stem:36s} {first[:100]}")
    print(f"(in {CONFIGS}; use one with --config NAME, or copy it and pass the file)", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from certkit.demo import run_demo

    run_demo(out_dir=args.out, device=args.device, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="certkit", description="Certified adversarial robustness.")
    p.add_argument("--version", action="version", version=f"certkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="IBP-train a small net on the bundled 8x8 digits, certify it, plot")
    d.add_argument("--out", default="runs/demo", help="run directory")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo config's)")
    _add_common(d)
    d.set_defaults(func=cmd_demo)

    cf = sub.add_parser("configs", help="list the shipped TOML configs (--config NAME takes them by name)")
    cf.add_argument("filter", nargs="?", default=None, help="only names containing this, e.g. mnist or colt")
    cf.set_defaults(func=cmd_configs)

    t = sub.add_parser("train", help="train a model from a TOML config (resumes an interrupted run)")
    t.add_argument("--config", required=True, help="a TOML file, or a shipped config's name (certkit configs)")
    t.add_argument("--out", default=None, help="run directory (default: runs/<name>)")
    t.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    t.add_argument("--fresh", action="store_true", help="discard an earlier run in the same directory")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config entry (TOML value), e.g. --set colt.stage_epochs=[0,0,2,2]; repeatable")
    t.add_argument("--until", type=int, default=None, metavar="EPOCH",
                   help="stop after this epoch; the same command without it resumes the run later")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _add_common(t, config=True)
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("verify", help="decide a VNN-LIB property of an ONNX network (VNN-COMP answer)")
    v.add_argument("onnx", help="the network (.onnx or .onnx.gz)")
    v.add_argument("vnnlib", help="the property (.vnnlib or .vnnlib.gz)")
    v.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole instance, loading included")
    v.add_argument("--max-binaries", type=int, default=None, help="MILP binary budget (default: exact)")
    v.add_argument("--out", default=None, help="result file (VNN-COMP format, with the counterexample if sat)")
    _add_common(v, data=False)
    v.set_defaults(func=cmd_verify)

    vc = sub.add_parser("vnncomp", help="run a VNN-COMP benchmark folder (resumable) and score it")
    vc.add_argument("bench", help="folder with instances.csv (and ground_truth.csv to score against)")
    vc.add_argument("--out", default=None, help="results CSV (default: runs/vnncomp/<benchmark>.csv)")
    vc.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every instance's timeout")
    vc.add_argument("--instances", type=int, default=None, help="only the first K instances")
    vc.add_argument("--every", type=int, default=1, help="only every k-th instance (a spread-out sample)")
    vc.add_argument("--max-binaries", type=int, default=None, help="MILP binary budget (default: exact)")
    _add_common(vc, data=False)
    _add_scale(vc)
    vc.set_defaults(func=cmd_vnncomp)

    sm = sub.add_parser("smooth", help="randomized smoothing: certify, predict, attack, report")
    sms = sm.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, helptext in (("certify", "Cohen's CERTIFY on test inputs: resumable JSON lines and Cohen's TSV"),
                             ("predict", "Cohen's PREDICT: accuracy and abstentions of the smoothed classifier"),
                             ("attack", "attack the smoothed classifier (SmoothAdv PGD/DDN, EOT-PGD, EOT-CW)")):
        a = sms.add_parser(action, help=helptext, description=helptext)
        a.add_argument("--checkpoint", required=True, help="base classifier: certkit checkpoint or .onnx")
        a.add_argument("--mean", type=float, nargs="+", default=None, help="ONNX nets: normalise inputs first")
        a.add_argument("--std", type=float, nargs="+", default=None, help="ONNX nets: with --mean")
        a.add_argument("--data", default=None, help="test set (default: the checkpoint's)")
        a.add_argument("--noise", default=None, choices=["gaussian", "laplace", "uniform"],
                       help="noise distribution; default: the checkpoint's training noise, else gaussian")
        a.add_argument("--sigma", type=float, default=None,
                       help="noise scale (σ, or λ for laplace/uniform); default: the checkpoint's training σ")
        a.add_argument("--n", type=int, default=100_000,
                       help="noise draws for the bound (certify) or the majority vote (predict, attack)")
        a.add_argument("--seed", type=int, default=0, help="seed of the noise (input i: seeded by (seed, i))")
        a.add_argument("--start", type=int, default=0, help="first test input")
        a.add_argument("--step", type=int, default=1, help="take every step-th test input (20: Cohen's 500 of 10k)")
        a.add_argument("--count", type=int, default=None, help="number of test inputs (default: all)")
        a.add_argument("--batch-size", type=int, default=None,
                       help="noisy copies per forward pass (default: 250 on CPU, where it fits the cache; 1000 else)")
        a.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_common(a)
        if action in ("certify", "predict"):
            a.add_argument("--alpha", type=float, default=0.001, help="failure probability of each answer")
            a.add_argument("--compile", action="store_true",
                           help="run the base classifier through torch.compile (needs a C compiler; 2x faster LeNet "
                                "on CPU; falls back to eager with a warning)")
        if action == "certify":
            a.add_argument("--n0", type=int, default=100, help="draws that select the class")
            a.add_argument("--certificate", default=None, choices=list(CERTIFICATES),
                           help="radius certificate; default: cohen (gaussian), laplace (laplace), uniform (uniform)")
            a.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                           help="radii of the summary table")
            a.add_argument("--out", default=None, help="output prefix (.tsv and .jsonl; default: runs/<model>/...)")
            a.add_argument("--shard", type=int, default=1, help="inputs per task, written together")
            _add_scale(a)
        if action == "attack":
            a.add_argument("--attack", default="smoothadv-pgd",
                           choices=["smoothadv-pgd", "smoothadv-ddn", "eot-pgd", "eot-cw", "boundary", "transfer"],
                           help="the attack (boundary: decision-based on the vote of --m draws; transfer: PGD on "
                                "--source, a plain model)")
            a.add_argument("--source", default=None, help="transfer: the model the attack is crafted on")
            a.add_argument("--norm", default="2", choices=["inf", "2"], help="boundary, transfer: norm of the radius")
            a.add_argument("--boundary-steps", type=int, default=1000, help="boundary: steps along the boundary")
            a.add_argument("--eps", type=float, default=0.5, help="attack radius (L2 for smoothadv-*, L∞ for eot-pgd)")
            a.add_argument("--m", type=int, default=8, help="noise draws per attack step")
            a.add_argument("--steps", type=int, default=20, help="attack steps")
        a.set_defaults(func=cmd_smooth, certificate=None)
    r = sms.add_parser("report", help="tables and plots of 'smooth certify' results (one or several files)",
                       description="tables and plots of 'smooth certify' results (one or several files)")
    r.add_argument("--results", nargs="+", required=True, help="JSON-lines results of 'smooth certify'")
    r.add_argument("--labels", nargs="+", default=None,
                   help="one name per results file (default: run folder, noise, σ, N, certificate)")
    r.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="radii of the table")
    r.add_argument("--alpha", type=float, default=0.001, help="α of the high-probability lower bound (and recertify)")
    r.add_argument("--recertify", default=None, choices=list(CERTIFICATES),
                   help="recompute the radii with this certificate from the stored counts")
    r.add_argument("--sigma", type=float, default=None, help="recertify: noise scale (default: each file's)")
    r.add_argument("--format", default="markdown", choices=["markdown", "latex", "tsv"], help="table format")
    r.add_argument("--table", default=None, help="also write the table to this file")
    r.add_argument("--plot", default=None, help="PNG of certified accuracy vs radius, a step curve per file")
    r.set_defaults(func=cmd_smooth)

    va = sub.add_parser("vae", help="provably robust VAE: train (maximise the certified ELBO bound), eval")
    va.add_argument("action", choices=["train", "eval"], help="train a proVAE from a config, or evaluate a checkpoint")
    va.add_argument("--config", help="TOML config (train)")
    va.add_argument("--checkpoint", help="a proVAE checkpoint (eval)")
    va.add_argument("--out", default=None, help="run directory (train) or JSON results file (eval)")
    va.add_argument("--fresh", action="store_true", help="train: discard an earlier run in --out")
    va.add_argument("--epochs", type=int, default=None, help="train: override the config's epochs")
    va.add_argument("--until", type=int, default=None, metavar="EPOCH",
                    help="train: stop after this epoch; the same command without it goes on")
    va.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="train: override one config entry (TOML value); repeatable")
    va.add_argument("--quiet", action="store_true", help="no progress output")
    va.add_argument("--data", default=None, help="eval: test set (default: the checkpoint's)")
    va.add_argument("--count", type=int, default=1000, help="test images (eval)")
    va.add_argument("--eps-bound", type=float, default=None, help="radius of the certified bound (default ε_train)")
    va.add_argument("--attack-eps", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2],
                    help="eval: radii of the ELBO attack")
    va.add_argument("--crown", action="store_true", help="also the certified bound with CROWN (tighter, slower)")
    va.add_argument("--pgd-steps", "--steps", dest="pgd_steps", type=int, default=20,
                    help="PGD steps of the ELBO attack (--steps is the old spelling)")
    va.add_argument("--images", default=None, help="PNG of inputs, reconstructions, attacks and prior samples")
    _add_common(va)
    va.set_defaults(func=cmd_vae)

    ba = sub.add_parser("bayes", help="Bayesian NNs: train (inference with a robust likelihood), eval")
    ba.add_argument("action", choices=["train", "eval"], help="run inference from a config, or evaluate a run")
    ba.add_argument("--config", help="TOML config (train)")
    ba.add_argument("--run", help="run directory (eval)")
    ba.add_argument("--epochs", type=int, default=None, help="train: override the config's epochs")
    ba.add_argument("--fresh", action="store_true",
                    help="train: run again even if --out holds a finished run (else it is kept and reused)")
    ba.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="train: override one config entry (TOML value), e.g. --set bayes.lam=0.5; repeatable")
    ba.add_argument("--out", default=None, help="run directory (train) or JSON results (eval)")
    ba.add_argument("--data", default=None, help="eval: test set (default: the run's)")
    ba.add_argument("--count", type=int, default=1000, help="eval: number of test inputs")
    ba.add_argument("--eps", type=float, default=0.1, help="eval: L∞ radius of the certificate and the attack")
    ba.add_argument("--methods", nargs="+", default=["ibp", "crown"], choices=["ibp", "crown"],
                    help="eval: bounds of the posterior-predictive certificate")
    ba.add_argument("--pgd-steps", type=int, default=20, help="eval: PGD steps on the predictive")
    ba.add_argument("--ood", default=None, help="out-of-distribution data set for the entropy AUROC")
    _add_common(ba)
    _add_scale(ba)
    ba.set_defaults(func=cmd_bayes)

    methods = [*BOUND_METHODS, *COMPLETE_METHODS]  # the bound methods, then the complete ones
    for name, helptext in (("certify", "certify a checkpoint or ONNX net on a test set"),
                           ("radius", "largest certified radius per test input, by bisection"),
                           ("attack", "PGD-attack a checkpoint")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--checkpoint", required=True, help="certkit .safetensors checkpoint or .onnx network")
        c.add_argument("--mean", type=float, nargs="+", default=None, help="ONNX nets: normalise inputs first")
        c.add_argument("--std", type=float, nargs="+", default=None, help="ONNX nets: with --mean")
        c.add_argument("--data", default=None, help="mnist, fashion-mnist, cifar10, svhn, digits")
        if name != "radius":
            c.add_argument("--eps", type=float, nargs="+", required=True, help="radii (one or more)")
        c.add_argument("--norm", default="inf", choices=["inf", "2"], help="norm of the ball")
        c.add_argument("--count", "--n", dest="count", type=int, default=None,
                       help="number of test inputs (default: all; --n is the old spelling)")
        c.add_argument("--start", type=int, default=0, help="first test input")
        c.add_argument("--step", type=int, default=1, help="take every step-th test input")
        c.add_argument("--batch-size", type=int, default=None,
                       help="inputs per batch, and per Ray task with --workers (default: 256 for IBP and PGD, 16 "
                            "for CROWN, 100 for the cascade, 20 with --workers)")
        _add_common(c)
        if name in ("certify", "radius"):
            c.add_argument("--method", default="ibp", choices=methods,
                           help="bound, or complete verifier (cascade: all stages)")
            c.add_argument("--timeout", type=float, default=None, help="seconds per input (bab, milp, cascade)")
            c.add_argument("--max-binaries", type=int, default=None, help="MILP binary budget (default: exact)")
            c.add_argument("--iterations", type=int, default=None, help="alpha: slope optimisation steps (20)")
            c.add_argument("--out", default=None, help="results JSONL (resumed if it exists)")
            _add_scale(c)
        if name == "radius":
            c.add_argument("--hi", type=float, default=0.5, help="largest radius tried")
            c.add_argument("--tol", type=float, default=1e-3, help="bisection tolerance")
            c.set_defaults(func=cmd_radius)
        elif name == "certify":
            c.add_argument("--pgd-steps", type=int, default=0, help="also run PGD with this many steps")
            c.add_argument("--plot", default=None, help="PNG of accuracy vs eps")
            c.add_argument("--float64-check", action="store_true",
                           help="confirm every certificate again on a float64 copy of the model")
            c.set_defaults(func=cmd_certify)
        else:
            c.add_argument("--method", default="pgd", choices=["pgd", "boundary", "transfer"],
                           help="pgd (white-box), boundary (decision-based: the Boundary Attack, L2 steps; its "
                                "point's distance in --norm decides each radius) or transfer (PGD on --source)")
            c.add_argument("--source", default=None, help="transfer: the model the attack is crafted on")
            c.add_argument("--pgd-steps", "--steps", dest="pgd_steps", type=int, default=40,
                           help="PGD steps (--steps is the old spelling)")
            c.add_argument("--restarts", type=int, default=1, help="PGD restarts")
            c.add_argument("--boundary-steps", type=int, default=1000, help="boundary: steps along the boundary")
            c.add_argument("--out", default=None,
                           help="JSON lines: a header (target, source, method, norm), then a row per radius and input")
            c.set_defaults(func=cmd_attack)
    return p


def _subparser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The innermost sub-command parser that ``args`` went through (``certkit smooth certify``'s, say)."""
    for dest in ("command", "action"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or getattr(args, dest, None) not in subs[0].choices:
            break
        parser = subs[0].choices[getattr(args, dest)]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the sub-command that got them, with its own options to suggest from
        _subparser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    import torch  # only now: the arguments are checked before the seconds torch takes to load

    if getattr(args, "seed", None) is not None:
        torch.manual_seed(args.seed)

    from certkit.data import DataError
    from certkit.errors import CertkitError
    from certkit.graph import UnsupportedOpError
    from certkit.io import CheckpointError, InUseError
    from certkit.specs import SpecError

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.command != "train" and hasattr(args, "device"):
        args.device = args.device or "cpu"
    if (getattr(args, "device", None) or "").startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (DataError, CheckpointError, SpecError, UnsupportedOpError, FileNotFoundError, ValueError,
            InUseError, CertkitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the rows written so far are on disk; workers are cancelled on the way out
        print("interrupted: what finished is saved; the same command resumes from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
