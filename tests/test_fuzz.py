"""The fast slice of the soundness fuzz campaign (certkit.fuzz; benchmarks/soundness_fuzz.py runs long ones)."""

import pytest
import torch

from certkit import fuzz


@pytest.mark.slow
def test_fuzz_slice_finds_no_violation():
    """~100 random cases: every bound contains the witnesses, no complete method or certificate is contradicted
    by a witness, every counterexample is real, no reported bound exceeds a witnessed value."""
    st = fuzz.run(range(100), timeout=2.0)
    assert st.violations == [], "\n".join(st.violations[:20])
    assert st.cases == 100 and st.points > 5000 and st.bound_checks > 30000
    for verdict in ("verified", "falsified", "certified", "milp-verified", "milp-falsified"):
        assert st.verdicts[verdict] > 0, st.summary()  # the slice exercises both answers of every method


def test_fuzz_catches_an_unsound_bound(monkeypatch):
    """The checks are live: CROWN bounds collapsed to their midpoint are caught."""
    real = fuzz.crown_bounds

    def shrunk(*args, **kwargs):
        b = real(*args, **kwargs)
        mid = (b.upper + b.lower) / 2
        return type(b)(mid, mid)

    monkeypatch.setattr(fuzz, "crown_bounds", shrunk)
    st = fuzz.run(range(0, 12, 2), checks=("bounds",))
    assert any(" crown:" in v for v in st.violations)


def test_fuzz_catches_a_wrong_verdict(monkeypatch):
    """A MILP that answers 'verified' to everything is caught by a witness."""
    from certkit.verify.milp import MilpEncoding, MilpResult

    def always(self, C, d, clauses=None, threshold=0.0, time_limit=60.0, stop_at_sign=True, tolerance=1e-5,
               row_lower=None):
        return MilpResult("verified", 1.0, float("inf"), None, 0.0, "fake")

    monkeypatch.setattr(MilpEncoding, "minimize_property", always)
    st = fuzz.run(range(1, 30, 2), checks=("verify", "milp"))
    assert any("verified, but a witness violates" in v for v in st.violations)
    assert any("MILP row" in v for v in st.violations)


def test_roundoff_bound_covers_float32_forward():
    """The a-priori round-off bound holds for the float32 forward pass of a badly scaled network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 3))
    with torch.no_grad():
        net[0].weight.mul_(1e6)
    x = torch.rand(64, 4)
    err = fuzz.roundoff_bound(net, x.double(), torch.float32)
    diff = (net(x).double() - net.double()(x.double())).abs()
    assert (diff <= err).all() and (err < 1e3).all()
