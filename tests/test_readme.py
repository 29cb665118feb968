"""The README's Python quickstarts run as written (with the solvers' time limits shortened)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_quickstarts_run_in_order():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    for long, short in (("timeout=120", "timeout=1"), ("time_limit=60", "time_limit=2")):
        code = code.replace(long, short)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    cert, radius, res, r = namespace["cert"], namespace["radius"], namespace["res"], namespace["r"]
    assert len(cert.verdicts) == 8 and all(v.verdict in ("verified", "falsified", "unknown") for v in cert.verdicts)
    assert radius.shape == (8,) and res.verdict in ("verified", "falsified", "unknown")
    assert r.verdict in ("verified", "falsified", "unknown")


def _cli_examples(text: str) -> list[str]:
    """The `certkit ...` command lines of a Markdown text's code blocks (continuation lines joined)."""
    lines = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):  # fences in pairs, any language
        if lang not in ("bash", "sh", ""):
            continue
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"^(\w+=\S+\s+)+", "", cmd.strip())  # CERTKIT_DATA=... certkit ...
            if cmd.startswith("certkit "):
                lines.append(cmd)
    return lines


def test_every_cli_example_in_the_readme_and_docs_parses():
    """Each `certkit ...` line in README.md and docs/ is accepted by today's parser (option names cannot drift)."""
    import shlex

    import pytest

    from certkit.cli import build_parser

    files = [README, *sorted((README.parent / "docs").glob("*.md"))]
    examples = [(f.name, cmd) for f in files for cmd in _cli_examples(f.read_text())]
    assert len(examples) >= 20
    for name, cmd in examples:
        words = shlex.split(cmd, comments=True)[1:]
        words = [w for w in words if not re.fullmatch(r"\[.*\]", w)]  # [--device cuda]-style optional parts
        if not words or "--help" in words or "..." in words:  # an elided example
            continue
        try:
            build_parser().parse_args(words)
        except SystemExit as e:
            pytest.fail(f"{name}: `{cmd}` does not parse (exit {e.code})")


def test_the_readme_cli_examples_run_at_small_sizes(tmp_path, monkeypatch, capsys):
    """The README's command lines, run in order with small sizes (1 epoch on 512 images, a few test inputs, short
    timeouts) and the files they name replaced by the shared copies: every one exits 0."""
    import os
    import shlex

    import pytest

    from certkit.cli import main

    data = os.environ.get("CERTKIT_DATA")
    shared = Path(data).parent if data else None
    if not (data and (Path(data) / "mnist").exists() and (shared / "vnncomp/2021/test").exists()):
        pytest.skip("needs CERTKIT_DATA with mnist/ and the VNN-COMP files beside it (CI: ../shared)")
    root = README.parent
    mnist_fc = shared / "vnncomp/2022/mnist_fc"
    files = {"net.onnx": str(mnist_fc / "onnx/mnist-net_256x2.onnx.gz"),
             "prop.vnnlib": str(mnist_fc / "vnnlib/prop_1_0.03.vnnlib.gz"),
             "vnncomp2021/benchmarks/test": str(shared / "vnncomp/2021/test"),
             "mnist_0.1.onnx": str(shared / "models/colt/mnist_0.1.onnx"),
             "configs/": str(root / "configs") + "/"}
    small = {"train": ["--epochs", "1", "--set", "data.train_n=512", "--set", "eval.n=50", "--quiet"],
             "certify": ["--count", "20", "--quiet"], "attack": ["--count", "20"], "radius": ["--count", "3"]}
    monkeypatch.chdir(tmp_path)
    ran = []
    commands = _cli_examples(README.read_text())
    for cmd in sorted(commands, key=lambda c: not c.startswith("certkit train")):  # the net the others use first
        for name, path in files.items():
            cmd = cmd.replace(name, path)
        words = shlex.split(cmd, comments=True)[1:]
        words = [{"1000": "3", "100": "3", "120": "5"}.get(w, w) if i and words[i - 1] in ("--count", "--timeout")
                 else w for i, w in enumerate(words)]
        argv = words + small.get(words[0], [])
        assert main(argv) == 0, f"`{cmd}` failed: {capsys.readouterr().err[-500:]}"
        ran.append(words[0])
    assert {"train", "certify", "attack", "radius", "verify", "vnncomp"} <= set(ran)


def test_every_figure_and_link_in_the_docs_exists():
    """The figures the docs show are committed, and every relative link of the README and docs resolves."""
    files = [README, *sorted((README.parent / "docs").glob("*.md"))]
    figures = 0
    for f in files:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", f.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            figures += target.endswith(".png")
            assert (f.parent / target).exists(), f"{f.name}: {target} does not exist"
    assert figures >= 5
