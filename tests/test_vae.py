"""proVAE: the certified ELBO bound is sound (sampled inputs and corners) and exact at ε = 0."""

import pytest
import torch

from certkit.generative import VAE, elbo_attack
from certkit.specs import LinfBall


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    v = VAE((1, 28, 28), latent=8, hidden=32, sigma0=0.5).eval()
    for p in v.parameters():  # larger weights: wider intervals, a harder test
        p.data.mul_(1.2)
    return v


def test_bound_is_exact_at_eps_zero(vae):
    x = torch.rand(4, 1, 28, 28)
    nu = torch.randn(4, 8)
    torch.testing.assert_close(vae.elbo_bound(x, 0.0, nu), vae.elbo(x, nu), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.1])
def test_bound_holds_for_sampled_inputs_and_corners(vae, eps):
    torch.manual_seed(1)
    x = torch.rand(3, 1, 28, 28)
    nu = torch.randn(3, 8)
    bound = vae.elbo_bound(x, eps, nu)
    s = LinfBall(x, eps)
    for p in s.sample(64, torch.Generator().manual_seed(2)):
        assert (vae.elbo(p, nu) >= bound - 1e-3).all()
    worst = elbo_attack(vae, x, eps, steps=20, samples=1)  # even the attacked point (other draws) stays above
    assert (vae.elbo(worst, nu) >= bound - 1e-3).all()
    assert (bound <= vae.elbo(x, nu)).all()


@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_crown_bound_is_sound_and_at_least_as_tight_as_ibp(vae, eps):
    torch.manual_seed(3)
    x, nu = torch.rand(2, 1, 28, 28), torch.randn(2, 8)
    with torch.no_grad():
        ibp, crown = vae.elbo_bound(x, eps, nu), vae.elbo_bound(x, eps, nu, "crown")
        assert (crown >= ibp - 1e-3).all() and (crown > ibp).any()
        for p in LinfBall(x, eps).sample(64, torch.Generator().manual_seed(4)):
            assert (vae.elbo(p, nu) >= crown - 1e-3).all()
    worst = elbo_attack(vae, x, eps, steps=20, samples=1)
    assert (vae.elbo(worst, nu) >= crown - 1e-3).all()
    torch.testing.assert_close(vae.elbo_bound(x, 0.0, nu, "crown"), vae.elbo(x, nu), rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="method"):
        vae.elbo_bound(x, eps, nu, "zonotope")


def test_bound_decreases_with_eps(vae):
    x, nu = torch.rand(2, 1, 28, 28), torch.randn(2, 8)
    b = [vae.elbo_bound(x, e, nu) for e in (0.0, 0.02, 0.05)]
    assert (b[0] >= b[1]).all() and (b[1] >= b[2]).all()


def test_elbo_attack_lowers_the_elbo_within_the_ball(vae):
    torch.manual_seed(3)
    x = torch.rand(4, 1, 28, 28)
    xa = elbo_attack(vae, x, 0.1, steps=10, samples=4, generator=torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    nu = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    before = torch.stack([vae.elbo(x, nu[i].expand(4, 8)) for i in range(64)]).mean(0)
    after = torch.stack([vae.elbo(xa, nu[i].expand(4, 8)) for i in range(64)]).mean(0)
    assert (after < before).all()


def test_overflowing_sigma_gives_a_vacuous_not_a_broken_bound():
    torch.manual_seed(0)
    v = VAE((1, 28, 28), latent=4, hidden=16).eval()
    for p in v.parameters():
        p.data.mul_(4.0)
    b = v.elbo_bound(torch.rand(2, 1, 28, 28), 0.2, torch.randn(2, 4))
    assert not torch.isnan(b).any()


def test_train_resume_and_eval_cli(tmp_path, mnist_dir, capsys):
    import json

    from certkit.cli import main

    (tmp_path / "v.toml").write_text("""
name = "v"
[data]
dataset = "mnist"
train_n = 256
[train]
latent = 8
hidden = 32
epochs = 2
batch_size = 64
eps = 0.05
ramp_epochs = 1
""")
    run = tmp_path / "run"
    base = ["--data-dir", str(mnist_dir)]
    assert main(["vae", "train", "--config", str(tmp_path / "v.toml"), "--out", str(run), "--quiet", "--until", "1",
                 *base]) == 0  # a time-boxed first part; the same command without --until goes on
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    assert main(["vae", "train", "--config", str(tmp_path / "v.toml"), "--out", str(run), "--quiet", *base]) == 0
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[-1]["eps"] == 0.05
    assert main(["vae", "train", "--config", str(tmp_path / "v.toml"), "--out", str(run), "--quiet", *base]) == 0
    assert len((run / "history.jsonl").read_text().splitlines()) == 2  # finished: resuming adds nothing
    (tmp_path / "w.toml").write_text((tmp_path / "v.toml").read_text().replace("eps = 0.05", "eps = 0.1"))
    capsys.readouterr()
    assert main(["vae", "train", "--config", str(tmp_path / "w.toml"), "--out", str(run), "--quiet", *base]) == 2
    assert "different config (eps differ)" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["vae", "eval", "--checkpoint", str(run / "model.safetensors"), "--count", "20", "--attack-eps", "0",
                 "0.05", "--steps", "3", "--out", str(out), "--images", str(tmp_path / "img.png"), *base]) == 0
    res = json.loads(out.read_text())
    assert res["eps_bound"] == 0.05 and res["bound"] <= res["elbo"] and res["pgd@0.05"] <= res["pgd@0.0"] + 1e-6
    assert res["bound"] <= res["pgd@0.05"] + 1e-3  # same draws: the proof lies below what the attack reaches
    out2 = tmp_path / "eval-crown.json"
    assert main(["vae", "eval", "--checkpoint", str(run / "model.safetensors"), "--count", "1", "--attack-eps",
                 "0.05", "--steps", "1", "--crown", "--out", str(out2), *base]) == 0
    res = json.loads(out2.read_text())
    assert res["bound"] - 1e-3 <= res["bound_crown"] <= res["elbo"] + 1e-3
    assert (tmp_path / "img.png").stat().st_size > 0


def test_warm_up_then_linear_eps_ramp():
    from certkit.generative.train import VAEConfig, eps_ramp

    ramp = eps_ramp(VAEConfig(eps=0.1, warmup_epochs=1, ramp_epochs=4))
    assert [ramp(t) for t in (0, 0.5, 1, 2, 3, 5, 9)] == pytest.approx([0, 0, 0, 0.025, 0.05, 0.1, 0.1])
    assert eps_ramp(VAEConfig(eps=0.1, ramp_epochs=0))(0) == 0.1


def test_several_draws_at_once_equal_one_draw_at_a_time(vae):
    torch.manual_seed(5)
    x, nus = torch.rand(3, 1, 28, 28), torch.randn(4, 3, 8)
    with torch.no_grad():
        for method in ("ibp", "crown"):
            together = vae.elbo_bound(x, 0.03, nus, method)
            one_by_one = torch.stack([vae.elbo_bound(x, 0.03, nu, method) for nu in nus])
            torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-2)
