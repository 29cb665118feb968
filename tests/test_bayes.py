"""Posterior-predictive certificates (Wicker et al. 2021, Theorem 1, and the tighter pairwise rule): soundness,
and the naive rule's failure."""

import pytest
import torch
from torch import nn

from certkit.attacks import pgd
from certkit.bayes import certify_posterior, hoeffding_confidence, max_radius_posterior, predictive
from certkit.bayes.certify import naive_certify, pairwise_gap, softmax_bounds, softmax_from_margins
from certkit.specs import LinfBall


def linear_samples():
    """Two 'networks' on a scalar input x ∈ [−1, 1], classes (y, a, b): sample 1 has logits (0, 5x, −5x), sample 2
    the constants (2, 0, 0). At x = 1 the predictive prefers a (0.55 against 0.40), yet the naive rule certifies y."""
    model = nn.Sequential(nn.Linear(1, 3))
    s1 = {"0.weight": torch.tensor([[0.0], [5.0], [-5.0]]), "0.bias": torch.zeros(3)}
    s2 = {"0.weight": torch.zeros(3, 1), "0.bias": torch.tensor([2.0, 0.0, 0.0])}
    return model, [s1, s2]


@pytest.mark.parametrize("rule", ["pairwise", "theorem1"])
def test_theorem_refuses_where_the_naive_rule_wrongly_certifies(rule):
    model, samples = linear_samples()
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    assert naive_certify(model, samples, x, y, 1.0, domain=None).item()  # the unsound rule says "robust"
    grid = torch.linspace(-1, 1, 201).unsqueeze(1)
    p = predictive(model, samples, grid)
    assert (p.argmax(1) != 0).any()  # ... but the predictive changes its class inside the box
    cert = certify_posterior(model, samples, x, y, 1.0, domain=None, rule=rule)
    assert not cert.certified.item()
    small = certify_posterior(model, samples, x, y, 0.01, domain=None, rule=rule)
    assert small.certified.item()  # a small box is certified


@pytest.mark.parametrize("rule", ["pairwise", "theorem1"])
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_mean_softmax_of_sampled_inputs_lies_within_the_bounds(method, rule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 4)).eval()
    samples = [{k: v + 0.3 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(5)]
    x = torch.rand(6, 1, 4, 4)
    y = predictive(model, samples, x).argmax(1)
    cert = certify_posterior(model, samples, x, y, 0.05, method, rule=rule)
    s = LinfBall(x, 0.05)
    for p in s.sample(128, torch.Generator().manual_seed(1)):
        mean = predictive(model, samples, p)
        assert (mean >= cert.lower - 1e-6).all() and (mean <= cert.upper + 1e-6).all()
        ok = cert.certified
        assert (mean[ok].argmax(1) == y[ok]).all()
        gaps = mean.gather(1, y[:, None]) - mean  # min_j p_y − p_j ≥ the certificate's margin, certified or not
        gaps[torch.arange(len(y)), y] = 1
        assert (gaps.amin(1) >= cert.margin - 1e-6).all()
    lo, up = softmax_bounds(model, s, 4)
    assert (lo <= up).all() and (lo >= 0).all() and (up <= 1).all()
    lo_c, up_c = softmax_bounds(model, s, 4, "crown")  # LBP keeps the better of CROWN and IBP per margin
    assert (lo_c >= lo - 1e-6).all() and (up_c <= up + 1e-6).all()


@pytest.mark.parametrize("rule", ["pairwise", "theorem1"])
def test_certified_inputs_survive_pgd_on_the_predictive_and_radius_bisection(rule):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    samples = [{k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(4)]
    x = torch.rand(20, 1, 4, 4)
    y = predictive(model, samples, x).argmax(1)
    cert = certify_posterior(model, samples, x, y, 0.02, rule=rule)
    assert cert.certified.any()

    class Mean(nn.Module):  # the predictive as one module, log-probabilities for PGD's cross-entropy
        def forward(self, z):
            return torch.log(torch.stack([torch.softmax(torch.func.functional_call(model, s, (z,)), 1)
                                          for s in samples]).mean(0))

    res = pgd(Mean(), x, y, 0.02, steps=50, restarts=3, loss="margin")
    assert not (cert.certified & res.success).any()
    r = max_radius_posterior(model, samples, x[:5], y[:5], hi=0.2, tol=1e-3, rule=rule)
    assert certify_posterior(model, samples, x[:5], y[:5], r.float().clamp(min=0), rule=rule).certified[r > 0].all()


@pytest.mark.parametrize("rule", ["pairwise", "theorem1"])
def test_hoeffding_confidence(rule):
    c = hoeffding_confidence(torch.tensor([0.0, 0.1, 0.5]), 1000, 10, rule)
    assert c[0] == 0 and 0 < c[1] < c[2] <= 1


def test_pairwise_gap_is_the_minimum_over_the_logit_box_and_never_weaker_than_theorem1():
    """Margin bounds from a box of logits [l, u]: D_yj lies below softmax_y − softmax_j at every logit vector in the
    box, equals it at the worst vector (y at l_y, the others at u) when that difference is ≥ 0, and is never below
    (and somewhere above) Theorem 1's lower_y − upper_j."""
    torch.manual_seed(3)
    B, K = 64, 5
    centre, radius = 3 * torch.randn(B, K), 2 * torch.rand(B, K)
    lo, hi = centre - radius, centre + radius
    full = lo[:, :, None] - hi[:, None, :]  # f_j − f_k ≥ l_j − u_k
    full[:, torch.arange(K), torch.arange(K)] = float("inf")
    y = torch.randint(0, K, (B,))
    gap = pairwise_gap(full, y)
    z = lo + (hi - lo) * torch.rand(4096, B, K)
    p = torch.softmax(z, 2)
    diff = p.gather(2, y[None, :, None].expand(4096, B, 1)) - p  # (S, B, K)
    off = torch.ones(B, K, dtype=torch.bool)
    off[torch.arange(B), y] = False
    assert (gap[off] <= diff.amin(0)[off] + 1e-6).all()
    worst = torch.softmax(hi.scatter(1, y[:, None], lo.gather(1, y[:, None])), 1)
    exact = worst.gather(1, y[:, None]) - worst
    nonneg = off & (exact >= 0)
    assert nonneg.any() and torch.allclose(gap[nonneg], exact[nonneg], atol=1e-6)
    lower, upper = softmax_from_margins(full)
    thm = lower.gather(1, y[:, None]) - upper
    assert (gap[off] >= thm[off] - 1e-6).all()
    assert (gap[off] > thm[off] + 1e-3).any()  # and strictly tighter somewhere


def test_pairwise_rule_certifies_everything_theorem1_does():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 6)).eval()
    samples = [{k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(6)]
    x = torch.rand(200, 1, 4, 4)
    y = predictive(model, samples, x).argmax(1)
    a = certify_posterior(model, samples, x, y, 0.01, rule="pairwise").certified
    b = certify_posterior(model, samples, x, y, 0.01, rule="theorem1").certified
    assert (a | ~b).all() and a.sum() > b.sum()
    with pytest.raises(ValueError, match="rule"):
        certify_posterior(model, samples, x, y, 0.01, rule="argmax")


def gaussian_regression():
    torch.manual_seed(0)
    X = torch.randn(40, 2)
    w_true = torch.tensor([[1.5, -0.7]])
    y = X @ w_true.T + 0.5 * torch.randn(40, 1)
    model = nn.Linear(2, 1, bias=False)
    noise, tau = 0.5, 1.0

    def loglik(m, p, x, t):
        return -((torch.func.functional_call(m, p, (x,)) - t) ** 2).sum() / (2 * noise ** 2)

    prec = X.T @ X / noise ** 2 + torch.eye(2) / tau ** 2
    cov = torch.linalg.inv(prec)
    mean = cov @ X.T @ y / noise ** 2
    return model, X, y, loglik, mean.squeeze(1), cov, tau


def test_hmc_recovers_a_known_gaussian_posterior_with_distinct_samples():
    from certkit.bayes.inference import hmc

    model, X, y, loglik, mean, cov, tau = gaussian_regression()
    post = hmc(model, X, y, loglik, n_samples=600, burn_in=100, leapfrog=10, step_size=0.03, prior_std=tau)
    w = torch.stack([s["weight"].flatten() for s in post.samples])
    assert 0.6 < post.info["accept_rate"] <= 1.0
    assert len({s["weight"].data_ptr() for s in post.samples}) == len(post.samples)  # copies, not aliases
    assert w.unique(dim=0).shape[0] > 0.5 * len(w)
    torch.testing.assert_close(w.mean(0), mean, atol=4 * cov.diag().sqrt().max() / 10, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), cov, atol=0.5 * cov.abs().max(), rtol=0)


def test_swag_samples_match_the_stored_moments():
    from certkit.bayes.inference import swag

    model, X, y, loglik, *_ = gaussian_regression()
    post = swag(model, X, y, loglik, epochs=30, swa_start=5, batch_size=8, lr=1e-3, rank=5, n_samples=4000)
    mean, sq, devs = post.info["mean"]["weight"], post.info["sq_mean"]["weight"], post.info["deviations"]
    w = torch.stack([s["weight"] for s in post.samples])
    expected = (sq - mean ** 2).clamp(min=0) / 2 + sum(d["weight"] ** 2 for d in devs) / (2 * (len(devs) - 1))
    torch.testing.assert_close(w.mean(0), mean, atol=4 * expected.sqrt().max() / 60, rtol=0)
    torch.testing.assert_close(w.var(0), expected, rtol=0.15, atol=1e-12)


def digits_small():
    from certkit.data import load_dataset

    d = load_dataset("digits", "train")  # 1,437 images: with fewer the posteriors are too wide to classify well
    return d.x, d.y


@pytest.mark.parametrize("method", ["map", "bbb", "noisy-adam", "vogn", "swag", "hmc"])
@pytest.mark.parametrize("robust", [False, True])
def test_every_method_learns_with_either_likelihood(method, robust):
    from functools import partial

    from certkit.bayes import inference as inf
    from certkit.bayes.likelihood import robust_loglik, standard_loglik
    from certkit.models import build

    x, y = digits_small()
    torch.manual_seed(0)
    model = build("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(32,))
    ll = partial(robust_loglik, eps=0.02, lam=0.25, num_classes=10) if robust else standard_loglik
    init = inf.fit_map(model, x, y, standard_loglik, epochs=8, lr=1e-2) if method in ("hmc", "swag") else None
    if method == "map":
        post = inf.Posterior(model, [inf.fit_map(model, x, y, ll, epochs=8, lr=1e-2)], "map")
    else:
        fn = {"bbb": inf.bayes_by_backprop, "noisy-adam": inf.noisy_adam, "vogn": inf.vogn, "swag": inf.swag,
              "hmc": inf.hmc}[method]
        kw = {"bbb": dict(epochs=8, lr=1e-2), "noisy-adam": dict(epochs=8, lr=1e-2, temperature=0.1),
              "vogn": dict(epochs=8, lr=0.1), "swag": dict(epochs=6, swa_start=3, lr=1e-2, rank=3),
              "hmc": dict(n_samples=5, burn_in=2, leapfrog=5, step_size=1e-3)}[method]
        post = fn(model, x, y, ll, init=init, **kw)
    acc = (post.predictive(x).argmax(1) == y).float().mean().item()
    assert acc > 0.7, f"{method} robust={robust}: train accuracy {acc}"
    cert = certify_posterior(model, post.samples[:3], x[:20], y[:20], 0.01)
    assert cert.certified.dtype == torch.bool


def test_per_example_gradients_of_the_robust_likelihood_sum_to_its_gradient():
    from functools import partial

    from certkit.bayes.inference import params_of, per_example_grads
    from certkit.bayes.likelihood import robust_loglik
    from certkit.models import build

    x, y = digits_small()
    x, y = x[:16], y[:16]
    torch.manual_seed(1)
    model = build("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    ll = partial(robust_loglik, eps=0.05, lam=0.25, num_classes=10)
    p = {k: v.requires_grad_(True) for k, v in params_of(model).items()}
    full = torch.autograd.grad(-ll(model, p, x, y), list(p.values()))
    per = per_example_grads(model, ll, {k: v.detach() for k, v in p.items()}, x, y)
    for g, k in zip(full, p):
        torch.testing.assert_close(per[k].sum(0), g, rtol=1e-4, atol=1e-5)


def test_posterior_save_load_and_eps_schedule(tmp_path):
    from certkit.bayes.inference import Posterior, params_of
    from certkit.bayes.likelihood import eps_schedule

    model = nn.Linear(3, 2)
    post = Posterior(model, [params_of(model), {k: v + 1 for k, v in params_of(model).items()}], "test")
    post.save(tmp_path / "p.safetensors")
    back = Posterior.load(tmp_path / "p.safetensors", model)
    assert back.method == "test" and torch.equal(back.samples[1]["weight"], post.samples[1]["weight"])
    assert [eps_schedule(0.1, e, 5) for e in range(6)] == pytest.approx([0, 0.025, 0.05, 0.075, 0.1, 0.1])


def test_every_loop_follows_the_eps_schedule_and_hmc_samples_at_full_eps():
    from functools import partial

    from certkit.bayes import inference as inf
    from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik
    from certkit.models import build

    x, y = digits_small()
    x, y = x[:64], y[:64]
    model = build("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(8,))
    seen: list[float] = []

    def recording(model, params, x, y, eps):
        seen.append(eps)
        return robust_loglik(model, params, x, y, eps, num_classes=10)

    for fn, kw in [(inf.fit_map, {}), (inf.bayes_by_backprop, {}), (inf.noisy_adam, {}), (inf.vogn, {}),
                   (partial(inf.swag, swa_start=2), {})]:
        seen.clear()
        fn(model, x, y, ScheduledLoglik(recording, 0.1, 3), epochs=4, batch_size=64, **kw)
        assert sorted(set(seen)) == pytest.approx([0.0, 0.05, 0.1]), fn
        assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.1)
    ll = ScheduledLoglik(recording, 0.1, 3)
    ll.set_epoch(0)
    seen.clear()
    inf.hmc(model, x, y, ll, n_samples=1, burn_in=0, leapfrog=1)
    assert set(seen) == {0.1}


def test_log_mixture_lower_bounds_the_probability_mixture_and_subsampled_curvature():
    from certkit.bayes.inference import _grad_and_curvature, params_of, per_example_grads
    from certkit.bayes.likelihood import robust_loglik

    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    p = params_of(model)
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 4, (10,))
    prob = robust_loglik(model, p, x, y, 0.1, lam=0.25, num_classes=4)
    log = robust_loglik(model, p, x, y, 0.1, lam=0.25, num_classes=4, mix="log")
    assert log <= prob + 1e-5  # Jensen: λ log p + (1 − λ) log q ≤ log(λ p + (1 − λ) q)
    with pytest.raises(ValueError, match="mix"):
        robust_loglik(model, p, x, y, 0.1, num_classes=4, mix="max")

    def ll(m, q, a, b):
        return robust_loglik(m, q, a, b, 0.1, num_classes=4)

    per = per_example_grads(model, ll, p, x, y)
    g_all, s_all = _grad_and_curvature(model, ll, p, x, y, None)
    g_sub, s_sub = _grad_and_curvature(model, ll, p, x, y, 4)
    for k in p:
        torch.testing.assert_close(g_sub[k], g_all[k], rtol=1e-4, atol=1e-6)  # the mean gradient: whole batch
        torch.testing.assert_close(s_all[k], (per[k] ** 2).mean(0))
        torch.testing.assert_close(s_sub[k], (per[k][:4] ** 2).mean(0))  # curvature: the first 4 examples


def test_robust_likelihood_worst_case_is_a_sound_lower_bound_and_lies_below_pgd():
    from certkit.bayes.inference import params_of
    from certkit.bayes.likelihood import robust_loglik, standard_loglik, worst_softmax_bound

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).eval()
    p = params_of(model)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
    log_lo = worst_softmax_bound(model, p, x, y, 0.05, 5)
    for xs in LinfBall(x, 0.05).sample(128, torch.Generator().manual_seed(0)):
        assert (torch.log_softmax(model(xs), 1).gather(1, y[:, None]).squeeze(1) >= log_lo - 1e-5).all()
    ibp = robust_loglik(model, p, x, y, 0.05, lam=0.25, num_classes=5)
    pgd_ll = robust_loglik(model, p, x, y, 0.05, lam=0.25, worst="pgd", num_classes=5)
    clean = standard_loglik(model, p, x, y)
    assert ibp <= pgd_ll + 1e-4 <= clean + 2e-4  # sound bound ≤ attack ≤ clean
    assert robust_loglik(model, p, x, y, 0.0, num_classes=5) == pytest.approx(clean.item(), rel=1e-5)


def test_crown_worst_case_is_sound_at_least_as_tight_as_ibp_and_has_the_objectives_gradient():
    from certkit.bayes.inference import params_of
    from certkit.bayes.likelihood import robust_loglik, worst_softmax_bound

    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).eval()
    p = {k: v.clone().requires_grad_(True) for k, v in params_of(model).items()}
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 5, (8,))
    crown = worst_softmax_bound(model, p, x, y, 0.05, 5, method="crown")
    ibp = worst_softmax_bound(model, p, x, y, 0.05, 5)
    assert (crown >= ibp - 1e-5).all() and (crown > ibp + 1e-3).any()  # one hidden layer: CROWN is tighter
    with torch.no_grad():
        for xs in LinfBall(x, 0.05).sample(256, torch.Generator().manual_seed(1)):
            assert (torch.log_softmax(model(xs), 1).gather(1, y[:, None]).squeeze(1) >= crown - 1e-5).all()
    ll = robust_loglik(model, p, x, y, 0.05, lam=0.25, worst="crown", num_classes=5, mix="log")
    grads = torch.autograd.grad(ll, list(p.values()))
    k, i = "1.weight", (3, 7)  # a finite difference on one weight, in float64
    p64 = {n: v.detach().double() for n, v in p.items()}
    m64 = model.double()

    def f(delta):
        q = dict(p64)
        q[k] = q[k].clone()
        q[k][i] += delta
        return float(robust_loglik(m64, q, x.double(), y, 0.05, lam=0.25, worst="crown", num_classes=5, mix="log"))

    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    assert grads[list(p).index(k)][i].item() == pytest.approx(fd, rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="worst must be"):
        robust_loglik(model, p, x, y, 0.05, worst="milp")
    with pytest.raises(ValueError, match="method must be"):
        worst_softmax_bound(model, p, x, y, 0.05, 5, method="milp")


def test_bayes_cli_train_and_eval(tmp_path, mnist_dir):
    import json

    from certkit.cli import main

    (tmp_path / "b.toml").write_text("""
name = "b"
[data]
dataset = "mnist"
train_n = 512
[model]
arch = "mlp"
kwargs = { hidden = [32] }
[bayes]
method = "bbb"
likelihood = "ibp"
eps = 0.05
epochs = 2
lr = 0.003
n_samples = 3
""")
    run = tmp_path / "run"
    assert main(["bayes", "train", "--config", str(tmp_path / "b.toml"), "--out", str(run), "--data-dir",
                 str(mnist_dir), "--set", "bayes.n_samples=4", "--epochs", "1"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["n_samples"] == 4 and saved["epochs"] == 1
    out = tmp_path / "eval.json"
    assert main(["bayes", "eval", "--run", str(run), "--count", "40", "--eps", "0.05", "--pgd-steps", "5",
                 "--ood", "fashion-mnist", "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    res = json.loads(out.read_text())
    assert res["ibp_certified"] <= res["pgd_accuracy"] <= res["accuracy"]
    assert 0 <= res["ood_auroc"] <= 1


def test_warm_start_is_the_shared_map_fit_and_is_cached(tmp_path):
    from certkit.bayes import run

    raw = {"data": {"dataset": "digits", "train_n": 300}, "model": {"arch": "mlp", "kwargs": {"hidden": [16]}},
           "bayes": {"method": "swag", "likelihood": "ibp", "eps": 0.02, "map_epochs": 2, "ramp_epochs": 2,
                     "epochs": 2, "swa_start": 0, "lr": 1e-3, "n_samples": 3, "mix": "log"}}
    cfg = run.read_config(raw)
    _, post, _ = run.run_inference(cfg, cache_dir=tmp_path)
    cached = list(tmp_path.glob("map-*.safetensors"))
    assert len(cached) == 1 and len(post.samples) == 3
    stamp = cached[0].stat().st_mtime_ns
    cfg2 = run.read_config({**raw, "bayes": {**raw["bayes"], "method": "bbb", "epochs": 1}})
    run.run_inference(cfg2, cache_dir=tmp_path)  # another method, same likelihood: the same MAP, not refitted
    assert list(tmp_path.glob("map-*.safetensors")) == cached and cached[0].stat().st_mtime_ns == stamp
    cfg3 = run.read_config({**raw, "bayes": {**raw["bayes"], "likelihood": "standard"}})
    run.run_inference(cfg3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("map-*.safetensors"))) == 2
    cfg4 = run.read_config({**raw, "bayes": {**raw["bayes"], "map_finish_epochs": 1}})
    run.run_inference(cfg4, cache_dir=tmp_path)  # a low-lr finish: another MAP fit
    assert len(list(tmp_path.glob("map-*.safetensors"))) == 3
    cfg5 = run.read_config({**raw, "bayes": {**raw["bayes"], "likelihood": "crown", "method": "vogn", "epochs": 1,
                                             "curvature_batch": 8}})
    _, post5, _ = run.run_inference(cfg5, cache_dir=tmp_path)  # CROWN-IBP worst case, per-example grads (vmap)
    assert len(list(tmp_path.glob("map-*.safetensors"))) == 4 and len(post5.samples) == 3
    assert run.posterior_std(post) > 0
    with pytest.raises(ValueError, match="likelihood must be"):
        run.read_config({**raw, "bayes": {**raw["bayes"], "likelihood": "milp"}})
    with pytest.raises(ValueError, match="unknown"):
        run.read_config({**raw, "bayes": {**raw["bayes"], "warmup": 3}})


def test_pgd_likelihood_per_example_gradients_run_the_attack_outside_vmap():
    from functools import partial

    from certkit.bayes import inference as inf
    from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik
    from certkit.models import build

    x, y = digits_small()
    x, y = x[:12], y[:12]
    torch.manual_seed(2)
    model = build("mlp", (1, 8, 8), 10, [0.5], [0.25], hidden=(16,))
    ll = ScheduledLoglik(partial(robust_loglik, lam=0.25, worst="pgd", num_classes=10, pgd_steps=3), 0.05, 0, 3)
    assert ll.needs_attack
    p = inf.params_of(model)
    torch.manual_seed(5)
    per = inf.per_example_grads(model, ll, p, x, y)
    torch.manual_seed(5)  # the same random start: the same adversarial inputs
    xa = ll.attack(model, p, x, y)
    q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    full = torch.autograd.grad(-ll(model, q, x, y, x_adv=xa), list(q.values()))
    for g, k in zip(full, q):
        torch.testing.assert_close(per[k].sum(0), g, rtol=1e-4, atol=1e-5)
    post = inf.vogn(model, x, y, ll, 1, 6, 1e-3, curvature_batch=3, n_samples=2)
    assert len(post.samples) == 2


def test_cifar10_cnn_code_path_on_the_shared_test_images(shared, recwarn):
    """The paper's CIFAR-10 CNN (2x conv 32 k4, maxpool, fc 512, fc 10) at eps = 1/255 runs end to end on the
    1,000 shared test images (shape only: real training needs the CIFAR-10 training set)."""
    from functools import partial

    from certkit.bayes import inference as inf
    from certkit.bayes.likelihood import ScheduledLoglik, robust_loglik
    from certkit.data import load_dataset
    from certkit.models import build

    data = load_dataset("cifar10", "test", shared / "data")
    x, y = data.x[:32], data.y[:32]
    torch.manual_seed(0)
    model = build("bnn-cnn", data.shape, 10, data.mean, data.std).eval()
    ll = ScheduledLoglik(partial(robust_loglik, lam=0.25, worst="ibp", num_classes=10, mix="log"), 1 / 255, 0)
    post = inf.vogn(model, x, y, ll, 1, 32, 1e-4, temperature=1e-3, damping=0.01, curvature_batch=4, n_samples=2)
    for method in ("ibp", "crown"):
        cert = certify_posterior(model, post.samples, x[:4], y[:4], 1 / 255, method)
        assert cert.certified.shape == (4,) and (cert.lower <= cert.upper + 1e-6).all()


def test_hmc_with_a_diagonal_mass_matrix_samples_the_known_posterior():
    """With M = the posterior precision's diagonal, steps of order one cross the posterior in every coordinate;
    with batches of one example, the Fisher mass is the exact empirical Fisher plus the prior precision."""
    from certkit.bayes.inference import fisher_mass, hmc

    model, X, y, loglik, mean, cov, tau = gaussian_regression()
    prec = torch.linalg.inv(cov).diag().view(1, 2)
    post = hmc(model, X, y, loglik, n_samples=600, burn_in=50, leapfrog=5, step_size=0.4, prior_std=tau,
               mass={"weight": prec}, init={"weight": mean.view(1, 2)})
    w = torch.stack([s["weight"].flatten() for s in post.samples])
    assert 0.6 < post.info["accept_rate"] <= 1.0
    torch.testing.assert_close(w.mean(0), mean, atol=4 * cov.diag().sqrt().max() / 10, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), cov, atol=0.3 * cov.abs().max(), rtol=0)
    est = fisher_mass(model, X, y, loglik, {"weight": mean.view(1, 2)}, tau, batch_size=1, batches=40)["weight"]
    resid = X @ mean - y.squeeze(1)  # per-example gradients x·r/σ²: the empirical Fisher is Σ x² r² / σ⁴
    torch.testing.assert_close(est.flatten(), (X ** 2 * resid[:, None] ** 2).sum(0) / 0.5 ** 4 + 1 / tau ** 2)
    with pytest.raises(ValueError, match="mass"):
        hmc(model, X, y, loglik, n_samples=1, burn_in=0, mass="identity")
