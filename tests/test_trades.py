"""TRADES (Zhang et al. 2019): the loss is the published one on a hand-computed case, the inner maximisation stays
in the ball and raises the KL, and the objective trains from a config."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certkit.train.objectives import TradesTraining, build_objective
from certkit.train.schedules import Ramp


def const(v):
    return Ramp(v, v, 0, 0)


def test_kl_and_loss_match_a_hand_computed_case(monkeypatch):
    # p = softmax(0, 0) = (1/2, 1/2), q = softmax(log 3, 0) = (3/4, 1/4): KL(p‖q) = ½·log(4/3)
    kl = TradesTraining.kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # a linear net on one input: f(x) = (x, 0); x = 0 (p = ½, ½); the attack's point x' = log 3 is fixed here
    net = nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [0.0]]))
        net.bias.zero_()
    trades = TradesTraining(const(0.5), beta=2.0)
    monkeypatch.setattr(trades, "attack", lambda model, x, eps: torch.full_like(x, math.log(3.0)))
    loss, metrics = trades(net, torch.zeros(1, 1), torch.tensor([1]), 0)
    # CE(f(0), y = 1) = log 2; + β·KL = 2·½·log(4/3)
    assert loss.item() == pytest.approx(math.log(2) + math.log(4 / 3), abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_the_inner_maximisation_stays_in_the_ball_and_raises_the_kl():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.rand(8, 1, 4, 4)
    for norm, eps in (("inf", 0.1), ("2", 0.5)):
        trades = TradesTraining(const(eps), norm=norm, steps=10)
        xa = trades.attack(net, x, eps)
        dist = (xa - x).flatten(1).abs().max(1).values if norm == "inf" else (xa - x).flatten(1).norm(dim=1)
        assert (dist <= eps + 1e-5).all() and xa.min() >= 0 and xa.max() <= 1
        with torch.no_grad():
            clean = net(x)
            start = TradesTraining.kl(clean, net((x + 0.001 * torch.randn_like(x)).clamp(0, 1)))
            assert (TradesTraining.kl(clean, net(xa)) >= start).all()
            assert TradesTraining.kl(clean, net(xa)).mean() > 10 * start.mean()
    was = net.train()
    trades.attack(net, x, 0.1)
    assert was.training  # the attack runs in eval mode and gives the mode back


def test_trades_trains_from_its_config_and_rejects_a_negative_beta(tmp_path):
    from certkit.io import load_config
    from certkit.train import TrainConfig, train

    cfg = TrainConfig.from_dict(load_config("mnist-trades-0.3"))
    assert (cfg.objective, cfg.trades_beta, cfg.pgd_steps, cfg.pgd_step_size, cfg.eps) == ("trades", 1.0, 40, 0.01,
                                                                                             0.3)
    small = TrainConfig.from_dict({"data": {"dataset": "digits"}, "model": {"arch": "small-conv"},
                                   "train": {"objective": "trades", "epochs": 2, "eps": 0.1, "pgd_steps": 3,
                                             "trades_beta": 1.0, "lr": 2e-3},
                                   "eval": {"eps": 0.1, "n": 100}})
    _, history = train(small, tmp_path / "run", progress=False)
    assert history[-1]["train_kl"] > 0 and history[-1]["train_adv_acc"] > 0.3
    with pytest.raises(ValueError, match="β"):
        TradesTraining(const(0.1), beta=-1.0)
    objective = build_objective(small, 10, 10)
    assert isinstance(objective, TradesTraining) and objective.beta == 1.0 and objective.steps == 3


def test_trades_kl_is_zero_at_the_clean_point():
    logits = torch.randn(5, 10)
    assert torch.allclose(TradesTraining.kl(logits, logits), torch.zeros(5), atol=1e-6)
    assert (TradesTraining.kl(logits, logits.flip(1)) > 0).all()
    assert F.kl_div(F.log_softmax(logits.flip(1), 1), F.softmax(logits, 1), reduction="none").sum(1).allclose(
        TradesTraining.kl(logits, logits.flip(1)), atol=1e-6)  # torch's KL, same value
