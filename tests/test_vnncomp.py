"""Input-splitting branch and bound against exact answers, and the VNN-COMP runner: answers, scores, resuming
after kill -9 without lost or duplicated rows."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from certkit.errors import CertkitError
from certkit.specs import Box, LinearSpec, SpecError
from certkit.verify.input_bab import input_bab, splits_inputs
from certkit.verify.milp import MilpEncoding
from certkit.verify.vnncomp import _read_rows, read_instances, run_benchmark, score


def small_net(seed: int, act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 2)).double().eval()


@pytest.mark.parametrize("seed,branching", [(0, "bound"), (1, "bound"), (2, "gradient"), (3, "gradient")])
def test_input_splitting_agrees_with_the_exact_milp(seed, branching):
    m = small_net(seed)
    x = torch.rand(1, 3, dtype=torch.float64)
    s = Box(x - 0.5, x + 0.5)
    c = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    exact = MilpEncoding(m, s).minimize(c[0], threshold=-1e9, stop_at_sign=False).bound
    assert splits_inputs(s)
    for t, expect in ((exact - 0.02, "verified"), (exact + 0.02, "falsified")):
        r = input_bab(m, s, c, torch.tensor([-t], dtype=torch.float64), time_limit=60, branching=branching)
        assert r.verdict == expect, (t, r)
        if expect == "verified":
            assert r.bound > 0 and r.bound <= exact - t + 1e-9  # a sound lower bound of the clause
        else:
            with torch.no_grad():
                assert s.contains(r.x, tol=0.0).all() and float((m(r.x) @ c.T).max()) - t <= 0


def test_input_splitting_decides_sigmoid_networks_too():
    m = small_net(5, nn.Sigmoid)
    x = torch.rand(1, 3, dtype=torch.float64)
    s = Box(x - 0.3, x + 0.3)
    c = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    with torch.no_grad():
        sampled = float((m(s.sample(20000, torch.Generator().manual_seed(0))[:, 0]) @ c.T).min())
    r = input_bab(m, s, c, torch.tensor([-(sampled - 0.01)], dtype=torch.float64), time_limit=60)
    assert r.verdict == "verified"
    r = input_bab(m, s, c, torch.tensor([-(sampled + 1e-3)], dtype=torch.float64), time_limit=60)
    assert r.verdict == "falsified"


def test_a_time_limit_gives_unknown_with_a_sound_bound():
    m = small_net(1)
    x = torch.rand(1, 3, dtype=torch.float64)
    s = Box(x - 1, x + 1)
    c = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    attained = MilpEncoding(m, s).minimize(c[0], threshold=-1e9, stop_at_sign=False).value
    r = input_bab(m, s, c, torch.tensor([-attained], dtype=torch.float64), time_limit=0.5)  # min ≤ 0, barely
    assert r.verdict in ("unknown", "falsified")
    assert r.bound <= 0


def bench(shared, name="test"):
    root = shared / "vnncomp" / "2021" / name
    if not root.exists():
        pytest.skip("no VNN-COMP benchmarks in ../shared")
    return root


def test_runner_answers_and_scores_the_test_benchmark(shared, tmp_path):
    root = bench(shared)
    rows = run_benchmark(root, tmp_path / "r.csv", timeout_scale=0.5, progress=None)
    assert [int(r["index"]) for r in rows] == list(range(len(read_instances(root))))
    ours, tools, wrong = score(rows, root)
    assert ours.correct == 5 and ours.wrong == 0 and not wrong and ours.points == 50
    rpm = next(t for t in tools if t.name == "RPM")
    assert rpm.wrong == 2 and rpm.points == 3 * 10 - 2 * 100
    sat = [r for r in rows if r["answer"] == "sat"]
    assert len(sat) == 1 and open(sat[0]["counterexample"]).read().startswith("sat\n((X_0 ")


def test_runner_resumes_after_kill_9_without_lost_or_duplicated_rows(shared, tmp_path):
    root = bench(shared)
    out = tmp_path / "r.csv"
    code = textwrap.dedent(f"""
        import time
        from certkit.verify.vnncomp import run_benchmark
        run_benchmark({str(root)!r}, {str(out)!r}, 0.5, progress=lambda s: time.sleep(1.5))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(_read_rows(out)) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(_read_rows(out))
    assert 2 <= before < 5
    with open(out, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write("4,onnx/test_unsat.onnx,vnnlib/test_pr")
    rows = run_benchmark(root, out, 0.5, progress=None)
    indices = [int(r["index"]) for r in csv.DictReader(open(out))]
    assert sorted(indices) == list(range(5)) and len(rows) == 5



def test_a_results_file_without_its_header_is_refused_not_duplicated(shared, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("0,onnx/test_nano.onnx,vnnlib/test_nano.vnnlib,60,unsat,0.10,,\n")  # e.g. grep dropped the header
    with pytest.raises(CertkitError, match="not a certkit vnncomp results file"):
        run_benchmark(bench(shared), out, 0.5, progress=None)
    assert out.read_text().count("\n") == 1

def test_counterexamples_are_checked_on_the_onnx_file_as_the_scorer_does(shared, tmp_path):
    from certkit.onnx_io import load_onnx
    from certkit.verify.vnnlib import check_counterexample, read_vnnlib, verify_vnnlib

    root = bench(shared)
    net, spec = root / "onnx/test_sat.onnx.gz", root / "vnnlib/test_prop.vnnlib.gz"
    model, props = load_onnx(net), read_vnnlib(spec)
    answer, x = verify_vnnlib(model, props, model.input_shape, timeout=30)
    assert answer == "sat"
    with torch.no_grad():
        y = model.double()(x.double())
    assert check_counterexample(net, props, x, y) is None
    assert "gives outputs" in check_counterexample(net, props, x, y + 0.1)
    far = x + 10.0  # outside the input box
    with torch.no_grad():
        assert "no unsafe set" in check_counterexample(net, props, far, model(far.double()))


def _identity_onnx(path) -> None:
    """y = x on one float32 input, as an ONNX file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                              [numpy_helper.from_array(np.ones((1, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def test_a_vnnlib_box_is_rounded_outwards_so_its_edge_is_not_lost(tmp_path):
    """float32(0.7) < 0.7: rounded to nearest, the box [0, 0.7] loses its edge, where the only counterexamples
    lie, and the spec's 0.7 moves with it. Before the fix the answer was 'sat' with x = float32(0.7), a point
    whose output does not reach 0.7 (the scorer rejects it); now x = 0.7 exactly."""
    from certkit.onnx_io import load_onnx
    from certkit.verify.vnnlib import check_counterexample, read_vnnlib, verify_vnnlib

    _identity_onnx(tmp_path / "id.onnx")
    (tmp_path / "p.vnnlib").write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                                       "(assert (>= X_0 0.0))\n(assert (<= X_0 0.7))\n(assert (>= Y_0 0.7))\n")
    net, props = load_onnx(tmp_path / "id.onnx"), read_vnnlib(tmp_path / "p.vnnlib")
    answer, x = verify_vnnlib(net, props, net.input_shape, timeout=20)
    assert answer == "sat" and float(x) == 0.7
    assert check_counterexample(tmp_path / "id.onnx", props, x, x) is None


def test_strict_comparisons_stay_strict_where_a_counterexample_is_checked(tmp_path):
    """On y = x over x in [0, 0.7], "Y_0 >= 0.7" is violated at x = 0.7 (sat) but "Y_0 > 0.7" nowhere: the
    only candidate, x = 0.7, gives y = 0.7, so the answer must not be sat; the same for a strict input bound."""
    import numpy as np

    from certkit.onnx_io import load_onnx
    from certkit.verify.vnnlib import check_counterexample, read_vnnlib, verify_vnnlib, violates

    _identity_onnx(tmp_path / "id.onnx")
    net = load_onnx(tmp_path / "id.onnx")
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.0))\n"
    cases = {"(assert (<= X_0 0.7))\n(assert (>= Y_0 0.7))": "sat",
             "(assert (<= X_0 0.7))\n(assert (> Y_0 0.7))": "not sat",
             "(assert (< X_0 0.7))\n(assert (>= Y_0 0.7))": "not sat"}
    for body, expected in cases.items():
        (tmp_path / "p.vnnlib").write_text(head + body)
        props = read_vnnlib(tmp_path / "p.vnnlib")
        answer, x = verify_vnnlib(net, props, net.input_shape, timeout=10)
        assert (answer == "sat") == (expected == "sat"), body
        edge = np.array([0.7])
        assert (check_counterexample(tmp_path / "id.onnx", props, edge, edge) is None) == (expected == "sat")
    p = props[0]
    assert p.open_upper.tolist() == [True] and not p.strict.any()
    assert violates(p, np.array([0.69]), np.array([0.7])) and not violates(p, np.array([0.7]), np.array([0.7]))


def test_bound_branching_splits_the_inputs_that_matter():
    """Only x_1 changes the output; x_0 spans a far wider range. Bound-based branching halves x_1, whose halves'
    bounds improve, and decides with few boxes; halving x_0 (the widest input) would never decide."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    with torch.no_grad():
        m[0].weight[:, 0] = 0.0
    s = Box(torch.tensor([[-100.0, -1.0]], dtype=torch.float64), torch.tensor([[100.0, 1.0]], dtype=torch.float64))
    exact = MilpEncoding(m, s).minimize(torch.tensor([1.0], dtype=torch.float64), threshold=-1e9,
                                        stop_at_sign=False).bound
    r = input_bab(m, s, torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([-(exact - 1e-3)],
                                                                                  dtype=torch.float64),
                  time_limit=30, branching="bound")
    assert r.verdict == "verified" and r.domains < 2000


def test_input_splitting_rejects_bad_arguments():
    s = Box(torch.zeros(1, 2), torch.ones(1, 2))
    m = nn.Linear(2, 1)
    with pytest.raises(SpecError, match="branching"):
        input_bab(m, s, torch.ones(1, 1), branching="widest")
    with pytest.raises(SpecError, match="C must be"):
        input_bab(m, s, torch.ones(1, 1, 1))


def test_the_competition_scripts_decide_an_instance(shared, tmp_path):
    """vnncomp/prepare_instance.sh and run_instance.sh as the competition calls them (needs the .venv that
    scripts/setup.sh or vnncomp/install_tool.sh makes)."""
    import gzip
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".venv/bin/certkit").exists():
        pytest.skip("no .venv with certkit in the repository (run vnncomp/install_tool.sh v1)")
    root = bench(shared)
    net, spec = tmp_path / "net.onnx", tmp_path / "spec.vnnlib"
    net.write_bytes(gzip.decompress((root / "onnx/test_sat.onnx.gz").read_bytes()))
    spec.write_bytes(gzip.decompress((root / "vnnlib/test_prop.vnnlib.gz").read_bytes()))
    env = {**os.environ, "CERTKIT_DEVICE": "cpu"}
    subprocess.run(["bash", str(repo / "vnncomp/prepare_instance.sh"), "v1", "test", str(net), str(spec)],
                   check=True, env=env, capture_output=True)
    out = tmp_path / "result.txt"
    subprocess.run(["bash", str(repo / "vnncomp/run_instance.sh"), "v1", "test", str(net), str(spec), str(out),
                    "30"], check=True, env=env, capture_output=True)
    assert out.read_text().startswith("sat\n((X_0 ")
    subprocess.run(["bash", str(repo / "vnncomp/run_instance.sh"), "v1", "test", str(tmp_path / "missing.onnx"),
                    str(spec), str(out), "30"], env=env, capture_output=True)
    assert out.read_text().strip() == "error"


def _boxes_file(path, centres, half, threshold):
    """A VNN-LIB file whose unsafe set is the disjunction, over the boxes, of 'Y_0 >= threshold' (X_2 = 0)."""
    rows = "\n".join(f"  (and (>= X_0 {a - half}) (<= X_0 {a + half}) (>= X_1 {b - half}) (<= X_1 {b + half})"
                     f" (>= X_2 0) (<= X_2 0) (>= Y_0 {threshold}))" for a, b in centres)
    decls = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "X_2", "Y_0", "Y_1"))
    path.write_text(f"{decls}(assert (or\n{rows}\n))\n")
    return path


def test_the_boxes_of_a_file_are_one_batch_and_agree_with_each_box_alone(tmp_path):
    """A file's boxes (same rows, same clauses) are verified as one batch: its answer is 'sat' iff one box alone
    is (the counterexample lies in a sat box and violates there), 'unsat' iff every box alone is."""
    from certkit.verify.vnnlib import read_vnnlib, verify_vnnlib

    m = small_net(4)
    centres = [(a / 4, b / 4) for a in range(-4, 5, 2) for b in range(-4, 5, 2)]  # 25 boxes
    with torch.no_grad():
        peak = max(float(m(torch.tensor([[a, b, 0.0]], dtype=torch.float64))[0, 0]) for a, b in centres)
    for threshold in (peak + 5.0, peak - 1e-3):  # every box safe; some box unsafe (its centre)
        props = read_vnnlib(_boxes_file(tmp_path / "f.vnnlib", centres, 0.05, threshold))
        assert len(props) == 25
        alone = [verify_vnnlib(m, [p], (1, 3), timeout=30)[0] for p in props]
        answer, x = verify_vnnlib(m, props, (1, 3), timeout=30)
        assert answer == ("sat" if "sat" in alone else "unsat" if set(alone) == {"unsat"} else "unknown")
        if threshold < peak:
            assert answer == "sat"
            pt = x.view(-1).numpy()
            assert any((pt >= p.lower).all() and (pt <= p.upper).all() for p in props)
            assert float(m(x).detach()[0, 0]) >= threshold
        else:
            assert answer == "unsat"


def test_every_stage_keeps_the_deadline():
    """The batched stages stop at the timeout (the attack at half of it) and ``deadline`` ends the complete
    stages for all inputs together: a 10⁷-step attack and a hard branch and bound on four inputs end in time."""
    from certkit.specs import Property
    from certkit.verify import verify_property

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                      nn.Linear(200, 2)).eval()
    x = torch.rand(4, 20)
    C = torch.tensor([[[1.0, -1.0]]]).expand(4, 1, 2)
    with torch.no_grad():  # holds at x, barely: not decided by bounds
        d = -(m(x) @ torch.tensor([1.0, -1.0])).unsqueeze(1) + 0.5
    prop = Property(LinearSpec(C, d), torch.tensor([0]))
    t = time.perf_counter()
    v = verify_property(m, Box(x - 0.3, x + 0.3), prop, timeout=1.0, pgd_steps=10**7, stages=("attack",))
    assert time.perf_counter() - t < 3.0 and all(r.seconds["attack"] <= 1.0 for r in v)
    t = time.perf_counter()
    v = verify_property(m, Box(x - 0.3, x + 0.3), prop, timeout=60.0, deadline=time.perf_counter() + 2.0)
    assert time.perf_counter() - t < 4.5, [r.seconds for r in v]
    assert all(r.verdict != "verified" or r.lower.max() > 0 for r in v)
