"""Posterior-predictive certificates (Wicker et al. 2021, Theorem 1): soundness, and the naive rule's failure."""

import pytest
import torch
from torch import nn

from certkit.attacks import pgd
from certkit.bayes import certify_posterior, hoeffding_confidence, max_radius_posterior, predictive
from certkit.bayes.certify import naive_certify, softmax_bounds
from certkit.specs import LinfBall


def linear_samples():
    """Two 'networks' on a scalar input x ∈ [−1, 1], classes (y, a, b): sample 1 has logits (0, 5x, −5x), sample 2
    the constants (2, 0, 0). At x = 1 the predictive prefers a (0.55 against 0.40), yet the naive rule certifies y."""
    model = nn.Sequential(nn.Linear(1, 3))
    s1 = {"0.weight": torch.tensor([[0.0], [5.0], [-5.0]]), "0.bias": torch.zeros(3)}
    s2 = {"0.weight": torch.zeros(3, 1), "0.bias": torch.tensor([2.0, 0.0, 0.0])}
    return model, [s1, s2]


def test_theorem_refuses_where_the_naive_rule_wrongly_certifies():
    model, samples = linear_samples()
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    assert naive_certify(model, samples, x, y, 1.0, domain=None).item()  # the unsound rule says "robust"
    grid = torch.linspace(-1, 1, 201).unsqueeze(1)
    p = predictive(model, samples, grid)
    assert (p.argmax(1) != 0).any()  # ... but the predictive changes its class inside the box
    cert = certify_posterior(model, samples, x, y, 1.0, domain=None)
    assert not cert.certified.item()
    small = certify_posterior(model, samples, x, y, 0.01, domain=None)
    assert small.certified.item()  # a small box is certified


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_mean_softmax_of_sampled_inputs_lies_within_the_bounds(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 4)).eval()
    samples = [{k: v + 0.3 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(5)]
    x = torch.rand(6, 1, 4, 4)
    y = predictive(model, samples, x).argmax(1)
    cert = certify_posterior(model, samples, x, y, 0.05, method)
    s = LinfBall(x, 0.05)
    for p in s.sample(128, torch.Generator().manual_seed(1)):
        mean = predictive(model, samples, p)
        assert (mean >= cert.lower - 1e-6).all() and (mean <= cert.upper + 1e-6).all()
        ok = cert.certified
        assert (mean[ok].argmax(1) == y[ok]).all()
    lo, up = softmax_bounds(model, s, 4)
    assert (lo <= up).all() and (lo >= 0).all() and (up <= 1).all()


def test_certified_inputs_survive_pgd_on_the_predictive_and_radius_bisection():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    samples = [{k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(4)]
    x = torch.rand(20, 1, 4, 4)
    y = predictive(model, samples, x).argmax(1)
    cert = certify_posterior(model, samples, x, y, 0.02)
    assert cert.certified.any()

    class Mean(nn.Module):  # the predictive as one module, log-probabilities for PGD's cross-entropy
        def forward(self, z):
            return torch.log(torch.stack([torch.softmax(torch.func.functional_call(model, s, (z,)), 1)
                                          for s in samples]).mean(0))

    res = pgd(Mean(), x, y, 0.02, steps=50, restarts=3, loss="margin")
    assert not (cert.certified & res.success).any()
    r = max_radius_posterior(model, samples, x[:5], y[:5], hi=0.2, tol=1e-3)
    assert certify_posterior(model, samples, x[:5], y[:5], r.float().clamp(min=0)).certified[r > 0].all()


def test_hoeffding_confidence():
    c = hoeffding_confidence(torch.tensor([0.0, 0.1, 0.5]), 1000, 10)
    assert c[0] == 0 and 0 < c[1] < c[2] <= 1
