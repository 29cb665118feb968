"""The execution layer: shards in this process and on Ray workers give the same rows; faults lose nothing."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from certkit.parallel import Executor, Shard, UnsoundError, run_isolated, shards

TIMING = {"time_s", "seconds", "time"}


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                         nn.Linear(24, 3)).eval()


def _data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = _net()(x).argmax(1)
    y[::5] = (y[::5] + 1) % 3  # some misclassified inputs
    return x, y


def _stable(rows):
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in rows), key=lambda r: json.dumps(r))


def test_shards_and_the_in_process_executor():
    work = shards(range(7), 3, scale=2)
    assert [s.items for s in work] == [[0, 1, 2], [3, 4, 5], [6]] and all(s.args == {"scale": 2} for s in work)
    out = list(Executor().map(lambda shared, items, scale: [shared + scale * i for i in items], 10, work))
    assert [r for _, r in out] == [[10, 12, 14], [16, 18, 20], [22]]  # in order, in this process
    with pytest.raises(Exception, match="at least 1"):
        shards([1], 0)
    with pytest.raises(Exception, match="at least 1"):
        Executor(workers=0)


def test_a_failing_input_is_narrowed_down_to_one_error_row():
    def fn(shared, items):
        if 4 in items:
            raise RuntimeError("input 4 is bad")
        return [{"idx": i} for i in items]

    rows = run_isolated(fn, None, Shard([3, 4, 5]), lambda i, args, msg: {"idx": i, "error": msg})
    assert rows == [{"idx": 3}, {"idx": 4, "error": "RuntimeError: input 4 is bad"}, {"idx": 5}]
    with pytest.raises(RuntimeError):  # without an error row the exception propagates
        run_isolated(fn, None, Shard([4]), None)

    def unsound(shared, items):
        raise UnsoundError("certified but broken")

    with pytest.raises(UnsoundError):  # never turned into a row
        run_isolated(unsound, None, Shard([1, 2]), lambda i, args, msg: {})


# a loaded 2-core CI machine can starve Ray's health checks; a node declared dead takes its driver with it
PATIENT_RAY = {"RAY_health_check_failure_threshold": "60", "RAY_health_check_timeout_ms": "30000",
               "RAY_gcs_rpc_server_reconnect_timeout_s": "120"}
SUMMARY = re.compile(r"\d+ (passed|failed|errors?|skipped)")


def test_the_ray_cases_in_a_child_process():
    """tests/ray_cases.py (rows on Ray workers equal the single-process rows; faults lose nothing) in its own pytest.

    When Ray declares its own node dead (its health checks starved on a loaded machine), the core worker ends the
    driver process at once (exit 1, no report): in a child, that costs one retry instead of the whole test session.
    A child that reports failed tests is never retried.
    """
    pytest.importorskip("ray")
    cases = str(Path(__file__).with_name("ray_cases.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cases]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), **PATIENT_RAY}
    for attempt in range(2):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        out = run.stdout + run.stderr
        reported = any(SUMMARY.search(line) for line in out.splitlines()[-3:])
        if run.returncode == 0 or reported:
            break
        print(f"attempt {attempt + 1}: the child ended with {run.returncode} and no report (Ray node died?):\n"
              f"{out[-3000:]}")
    assert run.returncode == 0, out[-6000:]
    assert SUMMARY.search(out) and " passed" in out and " failed" not in out
