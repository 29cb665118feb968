"""COLT: latent points stay in the region, forward_from continues a forward pass, stages freeze layers."""

import pytest
import torch
from torch import nn

from certkit import LinfBall, Normalize, to_graph
from certkit.attacks.latent import latent_attack, latent_layers
from certkit.bounds.zonotope import Zonotope, latent_point, latent_terms, zonotope_bounds
from certkit.data import load_dataset
from certkit.io import load_model
from certkit.train import TrainConfig, train
from certkit.train.colt import ColtSchedule
from conftest import assert_contained


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Normalize([0.5], [0.3]), nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_latent_points_lie_in_the_deepz_region_and_e0_is_its_centre():
    model = conv_net()
    graph = to_graph(model)
    s = LinfBall(torch.rand(3, 1, 8, 8), 0.05)
    _, zs = zonotope_bounds(model, s, return_all=True)
    bounds = [z.bounds() for z in zs]  # DeepZ's own bounds: the latent parameterisation is the same zonotope
    for node in latent_layers(model):
        zero = latent_terms(model, s, node, random=False)
        torch.testing.assert_close(latent_point(model, s, bounds, zero, node), zs[node].center, atol=1e-5, rtol=1e-5)
        b = zs[node].bounds()
        gen = torch.Generator().manual_seed(node)
        for _ in range(20):
            e = [Zonotope.project(3 * t) for t in latent_terms(model, s, node, gen)]  # projected back into the box
            assert_contained(b.lower, b.upper, latent_point(model, s, bounds, e, node))
    # the latent adversarial point is in the region, and forward_from continues the forward pass
    y = model(s.x).argmax(1)
    node = latent_layers(model)[1]
    z = latent_attack(model, s.x, y, 0.05, node, steps=5, bounds=bounds)
    assert_contained(zs[node].bounds().lower, zs[node].bounds().upper, z)
    vals = graph.forward(s.x, return_all=True)
    torch.testing.assert_close(graph.forward_from(node, vals[node]), vals[graph.output])
    with pytest.raises(ValueError, match="reads a node before"):
        _residual_forward_from()


def _residual_forward_from():
    from certkit import Residual

    m = nn.Sequential(nn.Linear(4, 4), Residual(nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), nn.Identity()))
    gr = to_graph(m)
    relu = next(i for i, n in enumerate(gr.nodes) if type(n.op).__name__ == "ReLU")
    gr.forward_from(relu, torch.rand(1, 4))


def test_schedule():
    s = ColtSchedule([2, 3, 3], eps=0.1, start_eps_factor=1.1, eps_factor=1.2, mix_epochs=2, lr=1e-3,
                     lr_stage_factor=0.5, lr_step=1, lr_gamma=0.5)
    assert [s.stage(e) for e in (0, 1.9, 2, 4.99, 5, 7.9)] == [0, 0, 1, 1, 2, 2]
    assert s.stage_eps(2) == pytest.approx(0.11) and s.stage_eps(0) == pytest.approx(0.11 * 1.44)
    assert s.kappa(2) == 0 and s.kappa(3) == pytest.approx(0.5) and s.kappa(4.5) == 1
    assert s.lr_at(0) == 1e-3 and s.lr_at(2.5) == 5e-4 and s.lr_at(7.5) == pytest.approx(2.5e-4)
    assert ColtSchedule([5], 0.1, lr=1.0, mix_epochs=1, lr_step=2, lr_gamma=0.5).lr_at(3.5) == 0.5


COLT = """
name = "colt-tiny"
[data]
dataset = "digits"
train_n = 128
[model]
arch = "small-conv"
[train]
objective = "colt"
batch_size = 64
lr = 0.001
eps = 0.05
l1 = 1e-5
pgd_steps = 3
[colt]
stage_epochs = [1, 1, 1]
layers = [1, 2]
mix_epochs = 1
attack_steps = 3
projections = 20
relu_stable = 0.01
[eval]
eps = 0.05
n = 40
"""


def test_colt_stages_train_and_freeze_layers(tmp_path):
    import tomllib

    cfg = TrainConfig.from_dict(tomllib.loads(COLT))
    assert cfg.epochs == 3
    model, history = train(cfg, tmp_path / "run", progress=False, log=False)
    assert [int(r["train_stage"]) for r in history] == [0, 1, 2]
    stages = [load_model(tmp_path / "run" / f"stage{k}.safetensors")[0] for k in range(3)]
    w = [list(m.parameters()) for m in stages]
    conv2 = 2  # parameters: [conv1.w, conv1.b, conv2.w, ...] (Normalize holds buffers only)
    assert torch.equal(w[0][0], w[1][0]) and torch.equal(w[1][0], w[2][0])  # conv1 frozen after stage 0
    assert torch.equal(w[1][conv2], w[2][conv2])  # conv2 frozen after stage 1
    assert not torch.equal(w[1][-1], w[2][-1])  # the classifier still trains in the last stage
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    # a run split at a stage boundary: the latent stages start from the stage-0 model (stage 0 gets 0 epochs)
    raw = tomllib.loads(COLT.replace("stage_epochs = [1, 1, 1]", "stage_epochs = [0, 1, 1]"))
    raw["model"]["init"] = str(tmp_path / "run" / "stage0.safetensors")
    later, hist2 = train(TrainConfig.from_dict(raw), tmp_path / "later", progress=False, log=False)
    assert [int(r["train_stage"]) for r in hist2] == [1, 2]
    assert torch.equal(list(later.parameters())[0], w[0][0])  # conv1 stays as stage 0 left it
    # split again after stage 1, with command-line style overrides: only the last stage runs, conv1-conv2 stay
    from certkit.io import apply_overrides

    raw = apply_overrides(tomllib.loads(COLT), ["colt.stage_epochs=[0, 0, 1]",
                                               f"model.init={tmp_path / 'later' / 'stage1.safetensors'}"])
    last, hist3 = train(TrainConfig.from_dict(raw), tmp_path / "last", progress=False, log=False)
    assert [int(r["train_stage"]) for r in hist3] == [2]
    start = list(load_model(tmp_path / "later" / "stage1.safetensors")[0].parameters())
    p3 = list(last.parameters())
    assert torch.equal(p3[0], start[0]) and torch.equal(p3[conv2], start[conv2])
    assert hist3[0]["train_eps"] == pytest.approx(history[2]["train_eps"])  # stage 2's eps, as in the unsplit run
    with pytest.raises(ValueError, match="stage_epochs"):
        TrainConfig.from_dict({"train": {"objective": "colt"}})
    data = load_dataset("digits", "test")
    assert data.x.shape[1:] == (1, 8, 8)


def test_latent_robustness_table():
    from certkit.attacks.latent import latent_robustness

    model = conv_net()
    x = torch.rand(20, 1, 8, 8)
    y = model(x).argmax(1)
    r = latent_robustness(model, x, y, 0.05, steps=5, projections=30)
    assert list(r) == ["input", "layer 1", "layer 2", "layer 3"]
    assert all(0 <= v <= 1 for v in r.values())
    big = latent_robustness(model, x, y, 0.5, steps=5, projections=30)
    assert big["layer 3"] <= r["layer 3"]  # a larger region admits at least as many latent adversarial points
