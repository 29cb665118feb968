"""Randomized smoothing: certificates against closed forms and each other, and statistical soundness."""

import json
import math
import tempfile

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from certkit.cli import main
from certkit.smoothing import CompiledBase, Noise, Smooth, certified_accuracy
from certkit.smoothing import certificates as cert
from certkit.smoothing.smooth import certified_accuracy_lower, max_certifiable_radius


def test_closed_forms_and_orderings():
    assert cert.cohen_radius(stats.norm.cdf(1.0), 0.5) == pytest.approx(0.5)
    assert np.isnan(cert.cohen_radius(0.4, 0.5))
    pa = np.linspace(0.55, 0.999, 40)
    cohen2 = cert.cohen_two_class_radius(pa, 1 - pa, 0.7)
    np.testing.assert_allclose(cohen2, cert.cohen_radius(pa, 0.7), rtol=1e-9)  # p_B = 1 − p_A: the same
    renyi = cert.renyi_radius(pa, 1 - pa, 0.7)
    assert (renyi <= cohen2 + 1e-9).all() and (renyi > 0).all()  # STN's bound is never above Cohen's
    lap = cert.laplace_radius(pa, None, 0.3)
    assert (np.diff(lap) > 0).all()  # monotone in p_A
    np.testing.assert_allclose(cert.laplace_radius(pa, 1 - pa, 0.3), lap, rtol=1e-9)  # one class = two classes
    np.testing.assert_allclose(cert.uniform_l1_radius(pa, 0.5), 2 * 0.5 * (pa - 0.5))
    assert cert.linf_from_l2(1.0, 784) == pytest.approx(1 / 28)
    dp = cert.pixeldp_radius(pa, 1 - pa, 0.7)
    assert (np.nan_to_num(dp) <= cohen2 + 1e-9).all()  # PixelDP is looser than Cohen


def test_renyi_optimum_beats_a_dense_grid_of_orders():
    pa, pb, s = 0.8, 0.15, 0.5
    grid = []
    for a in np.exp(np.linspace(np.log(1 + 1e-5), np.log(300), 20000)):
        m = ((pa ** (1 - a) + pb ** (1 - a)) / 2) ** (1 / (1 - a))
        inner = 1 - pa - pb + 2 * m
        if inner > 0:
            grid.append(-2 * s * s / a * math.log(inner))
    assert cert.renyi_radius(pa, pb, s) ** 2 >= max(grid) - 1e-6
    assert cert.renyi_radius(0.9999999, 1e-9, 0.5) > 0  # extreme counts stay finite (log space)


def test_clopper_pearson_coverage_and_edges():
    lo, up = cert.clopper_pearson(np.array([0, 50, 100]), 100, 0.05)
    assert lo[0] == 0 and up[2] == 1 and lo[1] < 0.5 < up[1]
    assert cert.max_certifiable_pa(100_000, 0.001) == pytest.approx(0.001 ** 1e-5)
    largest = max_certifiable_radius(Noise("gaussian", 0.25), 100_000, 0.001)
    assert largest == pytest.approx(0.25 * stats.norm.ppf(0.001 ** 1e-5))


def halfplane() -> nn.Module:
    """f(x) = 1 if x_0 > 0 else 0; smoothed with N(0, σ²): p_A = Φ(|x_0|/σ), the true radius is |x_0|."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        lin.bias.zero_()
    return lin


def test_statistical_soundness_on_a_classifier_with_known_probabilities():
    """Over many certifications, radii above the true radius happen at most α of the time (tolerance: 3 binomial
    standard deviations)."""
    sigma, alpha, trials = 0.5, 0.05, 3000
    smooth = Smooth(halfplane(), 2, Noise("gaussian", sigma), batch_size=100_000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(trials, generator=gen) * 0.6 + 0.02
    x = torch.stack([x0 * torch.where(torch.rand(trials, generator=gen) < 0.5, -1.0, 1.0),
                     torch.randn(trials, generator=gen)], 1)
    res = smooth.certify(x, 10, 300, alpha, generator=gen)
    true_class = (x[:, 0] > 0).long().numpy()
    assert (res.pred[res.pred >= 0] == true_class[res.pred >= 0]).mean() > 0.99
    wrong = (np.nan_to_num(res.radius, nan=-1) > x0.numpy()) | ((res.pred >= 0) & (res.pred != true_class))
    assert wrong.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert wrong.mean() > 0  # Clopper–Pearson is not absurdly loose either: some radii come close
    ok = certified_accuracy(res.radius, res.pred == true_class, [0.0, 0.1, 0.3])
    assert ok[0] >= ok[1] >= ok[2]
    lower = certified_accuracy_lower(res.radius, res.pred == true_class, [0.0, 0.1, 0.3], alpha)
    assert (lower <= ok).all()


def test_counts_predict_and_noise():
    smooth = Smooth(halfplane(), 2, Noise("gaussian", 1.0), batch_size=64)
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0]])
    c1 = smooth.counts(x, 500, torch.Generator().manual_seed(1))
    c2 = smooth.counts(x, 500, torch.Generator().manual_seed(1))
    assert torch.equal(c1, c2) and (c1.sum(1) == 500).all()
    assert c1[1, 1] > 490 and c1[2, 0] > 490
    pred = smooth.predict(x, 2000, 0.001, torch.Generator().manual_seed(2))
    assert pred[1] == 1 and pred[2] == 0 and pred[0] == -1  # a coin flip abstains
    with pytest.raises(ValueError, match="NaN"):
        smooth.counts(torch.tensor([[math.nan, 0.0]]), 10)
    with pytest.warns(UserWarning, match="never certify"):
        smooth.certify(x, 5, 4, 0.05)
    with pytest.raises(ValueError, match="does not fit"):
        smooth.certify(x, 5, 100, 0.05, certificate="laplace")
    gen = torch.Generator().manual_seed(3)
    lap = Noise("laplace", 0.7).sample((200_000,), gen, "cpu", torch.float64)
    assert lap.abs().mean().item() == pytest.approx(0.7, rel=0.02)
    uni = Noise("uniform", 0.7).sample((10_000,), gen, "cpu", torch.float32)
    assert uni.abs().max() <= 0.7
    with pytest.raises(ValueError, match="positive"):
        Noise("gaussian", 0.0)


def test_compiled_base_gives_the_same_counts_and_falls_back_when_compilation_fails(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    eager = Smooth(net, 3, Noise("gaussian", 0.5), 64).counts(x, 200, torch.Generator().manual_seed(0))
    compiled = CompiledBase(net)
    assert compiled.state_dict().keys() == {f"model.{k}" for k in net.state_dict()}
    fast = Smooth(compiled, 3, Noise("gaussian", 0.5), 64).counts(x, 200, torch.Generator().manual_seed(0))
    assert torch.equal(eager, fast)

    def broken(*a, **k):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: broken)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        fallback = Smooth(CompiledBase(net), 3, Noise("gaussian", 0.5), 64)
        again = fallback.counts(x, 200, torch.Generator().manual_seed(0))
    assert torch.equal(eager, again)


@pytest.mark.parametrize("noise, certificate", [("gaussian", "renyi"), ("gaussian", "cohen2"), ("laplace", "laplace"),
                                                ("laplace", "laplace1"), ("uniform", "uniform"),
                                                ("gaussian", "pixeldp")])
def test_every_certificate_runs_and_is_sound_on_the_halfplane(noise, certificate):
    scale = 0.5
    smooth = Smooth(halfplane(), 2, Noise(noise, scale), batch_size=50_000)
    gen = torch.Generator().manual_seed(4)
    x = torch.tensor([[0.3, 0.0], [-0.6, 1.0], [0.01, 0.0]])
    res = smooth.certify(x, 20, 2000, 0.01, certificate=certificate, generator=gen)
    assert res.norm == ("2" if noise == "gaussian" else "1")
    # the true L1/L2 radius of the half-plane is |x_0| in every norm (the boundary is axis-aligned)
    assert (np.nan_to_num(res.radius, nan=0) <= np.abs(x[:, 0].numpy()) + 1e-9).all()
    assert res.pred[1] == 0


def test_smoothadv_attack_raises_the_soft_loss_and_stays_in_the_ball():
    from certkit.attacks.smoothed import smoothadv_attack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)
    noise = 0.25 * torch.randn(8, 4, 1, 4, 4)

    def soft_loss(z):
        probs = torch.softmax(model((z.unsqueeze(1) + noise).flatten(0, 1)), 1).view(8, 4, -1).mean(1)
        return -torch.log(probs.gather(1, y[:, None])).squeeze(1)

    xa = smoothadv_attack(model, x, y, noise, 0.5, steps=10)
    assert ((xa - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all() and xa.min() >= 0 and xa.max() <= 1
    assert (soft_loss(xa) >= soft_loss(x) - 1e-6).all() and (soft_loss(xa) > soft_loss(x) + 1e-3).any()


def test_no_grad_smoothadv_direction_matches_the_true_gradient_and_raises_the_loss():
    from certkit.attacks.smoothed import smoothadv_attack

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4)
    y = model(x).argmax(1)
    sigma = 0.25
    noise = sigma * torch.randn(4, 20000, 1, 4, 4)

    def soft_loss(z):
        probs = torch.softmax(model((z.unsqueeze(1) + noise).flatten(0, 1)), 1).view(4, 20000, -1).mean(1)
        return -torch.log(probs.gather(1, y[:, None])).squeeze(1)

    step = 0.01  # one short step: the Stein estimate's direction against the exact gradient's
    exact = smoothadv_attack(model, x, y, noise, step, steps=1, step_size=step) - x
    stein = smoothadv_attack(model, x, y, noise, step, steps=1, step_size=step, no_grad=True) - x
    cos = torch.nn.functional.cosine_similarity(exact.flatten(1), stein.flatten(1))
    assert (cos > 0.9).all(), cos
    xa = smoothadv_attack(model, x, y, noise[:, :64], 0.5, steps=10, no_grad=True)
    assert ((xa - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert (soft_loss(xa) > soft_loss(x)).all()


def test_cifar10_code_path_resnet_smoothadv_step_and_certify(shared, recwarn):
    from certkit.data import load_dataset
    from certkit.models import build
    from certkit.train.objectives import SmoothAdvTraining

    data = load_dataset("cifar10", "test", shared / "data")
    assert len(data) == 1000 and data.x.shape[1:] == (3, 32, 32) and data.y[:4].tolist() == [3, 8, 8, 0]
    assert any("first 1,000" in str(w.message) for w in recwarn)
    torch.manual_seed(0)
    model = build("resnet20", data.shape, 10, data.mean, data.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    objective = SmoothAdvTraining(lambda step: 0.25, noise=0.25, m=2, steps=1)
    loss, stats_ = objective(model.train(), data.x[:8], data.y[:8], 0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and 0 <= float(stats_["adv_noisy_acc"]) <= 1
    smooth = Smooth(model.eval(), 10, Noise("gaussian", 0.25), batch_size=50)
    res = smooth.certify(data.x[:2], n0=10, n=50, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert res.counts.shape == (2, 10) and res.counts.sum(1).tolist() == [50, 50]
    assert ((res.pred == -1) | ((res.pred >= 0) & (res.pred < 10))).all()


@pytest.mark.parametrize("objective", ["gaussian", "stability", "smoothadv"])
def test_smoothing_objectives_train_and_certify_from_the_cli(tmp_path, objective, capsys):
    import json

    from certkit.cli import main

    (tmp_path / "c.toml").write_text(f"""
name = "s"
[data]
dataset = "digits"
train_n = 256
[model]
arch = "small-conv"
[train]
objective = "{objective}"
epochs = 2
batch_size = 64
eps = 0.25
ramp_epochs = 1
[smoothing]
sigma = 0.25
m = 2
steps = 2
[eval]
eps = 0.0
n = 20
""")
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "cert"
    args = ["smooth", "certify", "--checkpoint", str(tmp_path / "run/model.safetensors"), "--data", "digits",
            "--sigma", "0.25", "--n0", "10", "--n", "200", "--alpha", "0.01", "--count", "6", "--step", "20",
            "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert main(args) == 0
    # N = 200, α = 0.01 reach σ·Φ⁻¹(α^(1/N)) = 0.25·2.00: the default radii 0.75 and 1 are named before the run
    assert "no radius above 0.500 can be certified" in capsys.readouterr().err
    tsv = out.with_suffix(".tsv").read_text().splitlines()
    assert tsv[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(tsv) == 7
    assert [int(line.split("\t")[0]) for line in tsv[1:]] == [0, 20, 40, 60, 80, 100]
    assert main(args) == 0  # resumes: nothing is added or duplicated
    assert len(out.with_suffix(".tsv").read_text().splitlines()) == 7
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()][1:]
    assert len(rows) == 6 and all(sum(r["counts"]) == 200 for r in rows)
    assert main(["smooth", "report", "--results", str(out.with_suffix(".jsonl")), "--radii", "0", "0.1",
                 "--plot", str(tmp_path / "r.png")]) == 0
    # σ defaults to the checkpoint's training noise; another one is said
    ckpt = str(tmp_path / "run/model.safetensors")
    capsys.readouterr()
    assert main(["smooth", "predict", "--checkpoint", ckpt, "--data", "digits", "--n", "20", "--count", "2",
                 "--quiet"]) == 0
    assert "gaussian noise of scale 0.25 (the checkpoint's training noise)" in capsys.readouterr().err
    assert main(["smooth", "predict", "--checkpoint", ckpt, "--data", "digits", "--n", "20", "--count", "2",
                 "--sigma", "0.5", "--quiet"]) == 0
    assert "warning:" in capsys.readouterr().err
    if objective == "gaussian":  # the compiled base classifier from the CLI
        assert main(["smooth", "predict", "--checkpoint", str(tmp_path / "run/model.safetensors"), "--data", "digits",
                     "--sigma", "0.25", "--n", "100", "--count", "4", "--compile", "--quiet"]) == 0


@pytest.mark.parametrize("objective", ["gaussian", "stability"])
def test_a_laplace_base_trains_and_certifies_with_its_own_noise_by_default(tmp_path, objective, capsys):
    import json

    from certkit.cli import main
    from certkit.train.objectives import GaussianAugmentation

    torch.manual_seed(0)
    draws = GaussianAugmentation(Noise("laplace", 0.5)).noise.sample((4000,), None, "cpu", torch.float32)
    assert abs(float(draws.abs().mean()) - 0.5) < 0.03  # E|Laplace(λ)| = λ
    (tmp_path / "c.toml").write_text(f"""
name = "lap"
[data]
dataset = "digits"
train_n = 256
[model]
arch = "small-conv"
[train]
objective = "{objective}"
epochs = 1
batch_size = 64
[smoothing]
noise = "laplace"
sigma = 0.3
[eval]
eps = 0.0
n = 20
""")
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = tmp_path / "cert"
    capsys.readouterr()
    assert main(["smooth", "certify", "--checkpoint", str(tmp_path / "run/model.safetensors"), "--data", "digits",
                 "--n0", "10", "--n", "100", "--alpha", "0.01", "--count", "3", "--out", str(out), "--quiet"]) == 0
    assert "laplace noise of scale 0.3 (the checkpoint's training noise)" in capsys.readouterr().err
    header = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[0])
    assert (header["noise"], header["sigma"], header["certificate"]) == ("laplace", 0.3, "laplace")
    with pytest.raises(SystemExit, match="trained with laplace noise; give --sigma"):
        main(["smooth", "predict", "--checkpoint", str(tmp_path / "run/model.safetensors"), "--data", "digits",
              "--noise", "gaussian", "--n", "20", "--count", "2", "--quiet"])

def test_attacks_on_smoothed_classifiers_respect_their_sets_and_break_a_weak_model():
    from certkit.attacks.smoothed import eot_cw, eot_pgd, smoothadv_ddn, smoothadv_pgd, vote

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.rand(16, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    y = vote(model, x, 0.1, 200, generator=gen)
    for attack, norm, eps in ((lambda: smoothadv_pgd(model, x, y, 1.0, 0.1, 4, 20, generator=gen), 2, 1.0),
                              (lambda: smoothadv_ddn(model, x, y, 1.0, 0.1, 4, 20, generator=gen), 2, 1.0),
                              (lambda: eot_pgd(model, x, y, 0.3, 0.1, 4, 20, generator=gen), math.inf, 0.3)):
        xa = attack()
        assert ((xa - x).flatten(1).norm(p=norm, dim=1) <= eps + 1e-4).all() and xa.min() >= 0 and xa.max() <= 1
        assert (vote(model, xa, 0.1, 200, generator=gen) != y).float().mean() > 0.2  # large radii: many flips
    xa = eot_cw(model, x, y, 0.1, c=10.0, steps=100, lr=0.05, generator=gen)
    moved = (xa != x).flatten(1).any(1)
    assert moved.any() and (vote(model, xa[moved], 0.1, 200, generator=gen) != y[moved]).float().mean() > 0.5


def test_plain_cw_finds_points_beyond_the_exact_distance_to_a_linear_boundary():
    from certkit.attacks.smoothed import eot_cw

    torch.manual_seed(0)
    lin = nn.Linear(16, 2)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.25 + 0.5 * torch.rand(32, 1, 4, 4)
    y = model(x).argmax(1)
    w = (lin.weight[1] - lin.weight[0]).detach()
    exact = (x.flatten(1) @ w + (lin.bias[1] - lin.bias[0])).abs() / w.norm()  # distance to the boundary
    xa = eot_cw(model, x, y, 0.0, c=100.0, steps=300, lr=0.05)  # σ = 0: C&W on the model's own logits
    found = model(xa).argmax(1) != y
    dist = (xa - x).flatten(1).norm(dim=1)
    assert found.float().mean() > 0.9 and (xa >= 0).all() and (xa <= 1).all()
    assert (dist[found] >= exact[found] - 1e-5).all()  # no adversarial point is closer than the boundary
    assert (dist[found] <= 1.2 * exact[found] + 0.02).all()  # and C&W gets close to it
    with pytest.raises(ValueError, match="non-negative"):
        eot_cw(model, x, y, -0.1)


@pytest.mark.parametrize("attack", ["smoothadv-pgd", "smoothadv-ddn", "eot-pgd", "eot-cw", "boundary", "transfer"])
def test_smooth_attack_command(tmp_path, attack, capsys):
    from certkit.cli import main
    from certkit.io import save_model
    from certkit.models import build

    torch.manual_seed(0)
    model = build("small-conv", (1, 8, 8), 10, [0.5], [0.25])
    meta = {"name": "small-conv", "in_shape": [1, 8, 8], "num_classes": 10, "mean": [0.5], "std": [0.25], "kwargs": {}}
    save_model(tmp_path / "m.safetensors", model, meta)
    extra = {"boundary": ["--boundary-steps", "20"], "transfer": ["--source", str(tmp_path / "m.safetensors")]}
    assert main(["smooth", "attack", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "digits",
                 "--count", "8", "--attack", attack, "--eps", "0.5", "--m", "2", "--steps", "3", "--n", "20",
                 "--sigma", "0.25", *extra.get(attack, [])]) == 0
    assert "smoothed accuracy under attack" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --sigma: .* records no training noise"):
        main(["smooth", "attack", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "digits", "--count", "2",
              "--attack", attack])


def test_recertify_from_stored_counts_reproduces_and_compares_certificates():
    from certkit.smoothing.run import certify_dataset, recertify

    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    smooth = Smooth(base, 3, Noise("gaussian", 0.5), 500)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with tempfile.TemporaryDirectory() as d:
        rows = certify_dataset(smooth, x, y, list(range(8)), 50, 2000, 0.01, "renyi", f"{d}/r", progress=False)
    again = recertify(rows, "renyi", 0.01, 0.5)
    assert [r["radius"] for r in again] == pytest.approx([r["radius"] for r in rows])
    cohen = recertify(rows, "cohen2", 0.01, 0.5)  # same p_A, p_B bounds: Cohen's (tight) bound is the larger
    assert all(c["radius"] >= r["radius"] - 1e-9 for c, r in zip(cohen, rows))
    assert sum(r["radius"] > 0 for r in rows) >= 4
    with pytest.raises(ValueError, match="selected class"):
        recertify([{k: v for k, v in r.items() if k != "top"} for r in rows], "cohen", 0.01, 0.5)


def _results_file(path, sigma, radii, correct, data="mnist", n=100_000):
    header = {"_header": True, "checkpoint": f"runs/lenet-{sigma}/model.safetensors", "data": data,
              "noise": "gaussian", "sigma": sigma, "certificate": "cohen", "n0": 100, "n": n, "alpha": 0.001}
    rows = [{"idx": i, "label": 0, "predict": 0 if r > 0 else -1, "radius": r, "correct": int(c), "time": 0.1,
             "norm": "2"} for i, (r, c) in enumerate(zip(radii, correct))]
    path.write_text("\n".join(json.dumps(x) for x in [header, *rows]) + "\n")
    return path


def test_report_compares_several_files_in_every_table_format_and_plots_step_curves(tmp_path, capsys, monkeypatch):
    import certkit.report as rep

    a = _results_file(tmp_path / "a.jsonl", 0.25, [0.1, 0.3, 0.6, 0.0], [1, 1, 1, 0])
    b = _results_file(tmp_path / "b.jsonl", 0.5, [0.2, 0.9, 1.2, 0.4], [1, 0, 1, 1])
    figures = []
    monkeypatch.setattr(rep, "plot_accuracy_vs_eps", lambda curves, path, **kw: figures.append(
        rep.accuracy_figure(curves, **kw)) or path)
    args = ["smooth", "report", "--results", str(a), str(b), "--radii", "0", "0.25", "0.5", "1.0"]
    assert main([*args, "--plot", str(tmp_path / "c.png"), "--table", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    header, row_a, row_b = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][:3]
    assert "model" in header and "r=0.25" in header and "r=1" in header
    assert "lenet-0.25, gaussian σ=0.25, N=100,000, cohen" in row_a
    assert row_a.split("|")[-2].strip() == "0.0000" and row_b.split("|")[-2].strip() == "0.2500"  # at r = 1
    assert row_a.split("|")[4].strip() == "0.5000"  # r=0.25: inputs 1 and 2 of file a
    assert (tmp_path / "t.md").read_text().startswith("| ")
    ax = figures[0].axes[0]  # the figure as drawn: title, labels, one step curve per file, a legend
    assert "mnist" in ax.get_title() and "4 inputs" in ax.get_title()
    assert ax.get_xlabel() == "radius (L2)" and "accuracy" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lenet-0.25, gaussian σ=0.25, N=100,000, cohen", "lenet-0.5, gaussian σ=0.5, N=100,000, cohen"]
    lines = ax.get_lines()
    assert len(lines) == 2 and all(ln.get_drawstyle() == "steps-post" and ln.get_marker() in ("None", None, "")
                                   for ln in lines)
    xs = lines[1].get_xdata()
    assert len(xs) > 100 and xs[0] == 0 and xs[-1] >= 1.2  # a fine grid past the largest radius

    assert main([*args, "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.startswith("\\begin{tabular}{lrrrrr}") and "\\toprule" in latex and "lenet-0.25" in latex
    assert main([*args, "--format", "tsv", "--labels", "small", "large"]) == 0
    tsv = capsys.readouterr().out.splitlines()
    assert tsv[0].split("\t") == ["model", "n", "r=0", "r=0.25", "r=0.5", "r=1"] and tsv[1].startswith("small\t4\t")
    (tmp_path / "bad.jsonl").write_text("idx\tlabel\n")
    assert main(["smooth", "report", "--results", str(tmp_path / "bad.jsonl")]) == 2
    assert "not the .tsv" in capsys.readouterr().err
