import math

import pytest
import torch

from certkit.specs import Box, L1Ball, L2Ball, LinearSpec, LinfBall, SpecError, ball, margin_spec, worst_case_logits


def test_linf_ball_is_clipped_to_domain():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    s = LinfBall(x, 0.1)
    assert torch.allclose(s.lower, torch.tensor([[0.0, 0.4, 0.9]]))
    assert torch.allclose(s.upper, torch.tensor([[0.1, 0.6, 1.0]]))
    s = LinfBall(x, 0.1, domain=None)
    assert torch.allclose(s.lower, x - 0.1)


def test_per_sample_eps():
    x = torch.full((3, 4), 0.5)
    s = LinfBall(x, torch.tensor([0.0, 0.1, 0.2]))
    assert torch.allclose(s.upper[:, 0], torch.tensor([0.5, 0.6, 0.7]))


@pytest.mark.parametrize("bad, err", [(-0.1, "non-negative"), (float("nan"), "finite")])
def test_bad_eps(bad, err):
    with pytest.raises(SpecError, match=err):
        LinfBall(torch.zeros(2, 3), bad)


def test_bad_inputs():
    with pytest.raises(SpecError, match="NaN"):
        LinfBall(torch.tensor([[0.1, float("nan")]]), 0.1)
    with pytest.raises(SpecError, match="batched"):
        LinfBall(torch.zeros(3), 0.1)
    with pytest.raises(SpecError, match="outside the data domain"):
        LinfBall(torch.full((1, 3), 2.0), 0.1)
    with pytest.raises(SpecError, match="shape"):
        LinfBall(torch.zeros(2, 3), torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(SpecError, match="unknown norm"):
        ball("3", torch.zeros(1, 2), 0.1)
    with pytest.raises(SpecError, match="exceeds"):
        Box(torch.ones(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("cls", [LinfBall, L2Ball, L1Ball])
def test_samples_lie_in_the_set(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 10, generator=g)
    s = cls(x, 0.3)
    pts = s.sample(64, g)
    assert pts.shape == (64, 4, 10)
    assert all(s.contains(p).all() for p in pts)
    dist = (pts - x).flatten(2).norm(p=s.p, dim=2)
    assert dist.max() <= 0.3 + 1e-5
    assert dist.max() > 0.2  # the samples reach far into the set


def test_l2_projection():
    x = torch.full((2, 5), 0.5)
    s = L2Ball(x, 0.1)
    p = s.project(x + torch.randn(2, 5))
    assert ((p - x).norm(dim=1) <= 0.1 + 1e-6).all()
    assert s.contains(p).all()
    assert not math.isinf(s.p)


def test_margin_spec_rows():
    y = torch.tensor([0, 2])
    spec = margin_spec(y, 3)
    assert spec.C.shape == (2, 2, 3)
    out = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0]])
    assert torch.allclose(spec.apply(out), torch.tensor([[2.0, 1.0], [5.0, 4.0]]))
    with pytest.raises(SpecError):
        margin_spec(torch.tensor([3]), 3)


def test_linear_spec_bound_contains_samples():
    g = torch.Generator().manual_seed(1)
    C, d = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, generator=g)
    spec = LinearSpec(C, d)
    lo = torch.randn(3, 5, generator=g)
    hi = lo + torch.rand(3, 5, generator=g)
    l, u = spec.bound(lo, hi)
    for _ in range(200):
        v = spec.apply(lo + torch.rand(3, 5, generator=g) * (hi - lo))
        assert (v >= l - 1e-5).all() and (v <= u + 1e-5).all()


def test_worst_case_logits():
    y = torch.tensor([1])
    z = worst_case_logits(torch.tensor([[2.0, -1.0]]), y, 3)
    assert torch.equal(z, torch.tensor([[-2.0, 0.0, 1.0]]))


def test_random_draws_follow_the_generator_or_the_target_device():
    from certkit import rng

    a = rng.uniform((3, 4), torch.Generator().manual_seed(5), torch.float64, "cpu")
    assert torch.equal(a, torch.rand((3, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    # no generator: drawn on the target device itself ("meta" stands in for an accelerator here)
    assert rng.normal((2, 2), None, torch.float32, "meta").device.type == "meta"
    # a seeded CPU generator: drawn on the CPU, then moved, so every device sees the same numbers
    moved = rng.normal((2, 2), torch.Generator().manual_seed(1), torch.float32, "meta")
    assert moved.device.type == "meta" and moved.shape == (2, 2)
