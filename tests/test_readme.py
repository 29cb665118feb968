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
