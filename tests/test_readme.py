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
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
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
