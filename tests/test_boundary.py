"""The Boundary Attack: it never leaves the domain, keeps only adversarial points, never moves away from the input,
and on a linear classifier it approaches the exact distance to the decision boundary."""

import torch
from torch import nn

from certkit.attacks.boundary import boundary_attack


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def test_it_stays_in_the_domain_keeps_only_adversarial_points_and_only_gets_closer():
    net = _mlp()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # one input the net already gets wrong: its adversarial point is itself

    def classify(z):
        return net(z).argmax(1)

    r = boundary_attack(classify, x, y, steps=300, generator=torch.Generator().manual_seed(0))
    assert r.success.all() and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert (classify(r.x_adv) != y).all()  # every returned point is adversarial
    assert r.distance[0] == 0 and torch.equal(r.x_adv[0], x[0])
    hist = torch.stack(r.history)  # (steps, B): the distance never grows
    assert (hist[1:] <= hist[:-1]).all()
    assert (hist[-1][1:] < 0.7 * hist[0][1:]).float().mean() > 0.8  # and shrinks for most inputs
    assert torch.allclose(r.distance, (r.x_adv - x).flatten(1).norm(dim=1))


def test_on_a_linear_classifier_it_approaches_the_exact_distance():
    torch.manual_seed(0)
    w, b = torch.randn(20), torch.tensor(0.3)

    def classify(z):
        return (z.flatten(1) @ w + b > 0).long()

    x = 0.2 * torch.randn(6, 20)
    y = classify(x)
    exact = (x @ w + b).abs() / w.norm()  # the distance to the hyperplane (the domain is far away)
    r = boundary_attack(classify, x, y, steps=1500, domain=(-50.0, 50.0), generator=torch.Generator().manual_seed(0))
    assert r.success.all() and (r.distance >= exact - 1e-4).all()  # no point closer than the boundary exists
    assert (r.distance <= 1.05 * exact).all(), (r.distance / exact)  # measured: within 0.3 %


def test_it_runs_on_a_smoothed_classifier_by_majority_vote():
    from certkit.attacks.smoothed import vote

    net = _mlp()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(0)
    y = vote(net, x, 0.25, 50, generator=gen)
    r = boundary_attack(lambda z: vote(net, z, 0.25, 50, generator=gen), x, y, steps=50,
                        generator=torch.Generator().manual_seed(0))
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1 and r.queries > 50
    hist = torch.stack(r.history)
    assert (hist[1:] <= hist[:-1]).all()
