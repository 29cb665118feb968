"""Approximate Bayesian inference over the weights of any certkit network, on one functional core.

Weights are dicts {name: tensor} evaluated with ``torch.func.functional_call``; every method takes a pluggable
``loglik(model, params, x, y) -> Σ log p(y | x, w)`` over a mini-batch (e.g. the robust likelihood), a Gaussian
prior N(0, prior_std²) and returns a :class:`Posterior`: a fixed list of weight samples, the empirical
predictor that certificates are about. ``temperature`` (BBB, NoisyAdam, VOGN) scales the posterior variance, as the
KL weight of tempered variational objectives does (1: the plain one); small data sets give wide posteriors.
``damping`` (NoisyAdam, VOGN) is Zhang et al.'s extrinsic damping: added to the curvature, it caps the variance
of weights the data hardly constrains (e.g. those of always-black MNIST pixels, which IBP's radius term sees).

* :func:`fit_map` — SGD/Adam on the log posterior (the MAP baseline).
* :func:`bayes_by_backprop` — Blundell et al. 2015: mean-field Gaussian q, σ = softplus(ρ), reparameterised ELBO
  (the KL term weighted by ``temperature``).
* :func:`noisy_adam` — Zhang et al. 2018 (noisy natural gradient, Noisy Adam): Adam's update of the mean,
  μ ← μ − α·m̂/(√f̂ + γ), with weight noise N(μ, 1/(N·(f + γ))), f an EMA of the per-example squared
  gradients (the empirical Fisher diagonal), γ = 1/(N·prior variance).
* :func:`vogn` — Khan et al. 2018 / Osawa et al. 2019: per-example gradients (vmap) give the Gauss–Newton
  diagonal s; μ ← μ − α·(ĝ + γμ)/(s + γ), σ² = 1/(N·(s + γ)).
* :func:`swag` — Maddox et al. 2019: first and second moments and the last K deviations of an SGD trajectory;
  samples μ + diag(σ)·z₁/√2 + D·z₂/√(2(K − 1)).
* :func:`hmc` — Neal 2011: leapfrog trajectories (step size jittered per trajectory) with Metropolis
  accept/reject on U(w) = −log-lik − log prior (the same, robust if so chosen, likelihood as the others); every
  stored sample is its own copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
LogLik = Callable[[nn.Module, Params, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Posterior:
    """``samples``: weight sets of ``model``; ``info``: method-specific numbers (e.g. HMC's accept rate)."""

    model: nn.Module
    samples: list[Params]
    method: str
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def predictive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(functional_call(self.model, s, (x,)), 1) for s in self.samples]).mean(0)

    def save(self, path) -> None:
        from safetensors.torch import save_file

        flat = {f"{i}/{k}": v.detach().cpu().contiguous() for i, s in enumerate(self.samples) for k, v in s.items()}
        save_file(flat, str(path), metadata={"method": self.method, "n": str(len(self.samples))})

    @classmethod
    def load(cls, path, model: nn.Module) -> Posterior:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            samples: list[Params] = [{} for _ in range(int(meta["n"]))]
            for key in f.keys():
                i, name = key.split("/", 1)
                samples[int(i)][name] = f.get_tensor(key)
        return cls(model, samples, meta["method"])


def params_of(model: nn.Module) -> Params:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


PROGRESS = {"show": True}  # `certkit bayes train --quiet` turns the bars off


def _progress(iterable, desc: str):
    """A progress bar over epochs or HMC iterations (in a terminal only, and not with --quiet)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if PROGRESS["show"] else True)


def _epochs(epochs: int, loglik: LogLik):
    """range(epochs), telling a scheduled likelihood (``set_epoch``) which epoch starts."""
    for epoch in _progress(range(epochs), "epoch"):
        if hasattr(loglik, "set_epoch"):
            loglik.set_epoch(epoch)
        yield epoch


def _log_prior(params: Params, std: float) -> torch.Tensor:
    return sum(-(p ** 2).sum() / (2 * std ** 2) for p in params.values())


def fit_map(model, x, y, loglik: LogLik, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
            prior_std: float = 1.0, init: Params | None = None, seed: int = 0) -> Params:
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.clone().requires_grad_(True) for k, v in (init or params_of(model)).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    n = len(y)
    for _ in _epochs(epochs, loglik):
        for idx in _batches(n, batch_size, gen):
            loss = -(n / len(idx)) * loglik(model, params, x[idx], y[idx]) - _log_prior(params, prior_std)
            opt.zero_grad()
            (loss / n).backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}


def bayes_by_backprop(model, x, y, loglik: LogLik, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                      prior_std: float = 1.0, init_std: float = 1e-3, n_samples: int = 10,
                      temperature: float = 1.0, init: Params | None = None, seed: int = 0) -> Posterior:
    gen = torch.Generator().manual_seed(seed)
    mu = {k: v.clone().requires_grad_(True) for k, v in (init or params_of(model)).items()}
    rho = {k: torch.full_like(v, math.log(math.expm1(init_std))).requires_grad_(True) for k, v in mu.items()}
    opt = torch.optim.Adam([*mu.values(), *rho.values()], lr=lr)
    n = len(y)
    for _ in _epochs(epochs, loglik):
        for idx in _batches(n, batch_size, gen):
            sigma = {k: F.softplus(r) for k, r in rho.items()}
            w = {k: mu[k] + sigma[k] * torch.randn(mu[k].shape, generator=gen).to(mu[k]) for k in mu}
            kl = sum((torch.log(prior_std / sigma[k]) + (sigma[k] ** 2 + mu[k] ** 2) / (2 * prior_std ** 2)
                      - 0.5).sum() for k in mu)
            loss = -(n / len(idx)) * loglik(model, w, x[idx], y[idx]) + temperature * kl
            opt.zero_grad()
            (loss / n).backward()
            opt.step()
    with torch.no_grad():
        sigma = {k: F.softplus(r) for k, r in rho.items()}
        samples = [{k: mu[k] + sigma[k] * torch.randn(mu[k].shape, generator=gen).to(mu[k]) for k in mu}
                   for _ in range(n_samples)]
    return Posterior(model, samples, "bbb", {"mean": {k: v.detach() for k, v in mu.items()}})


def _perturb(mu: Params, var: Params, gen) -> Params:
    """One draw from the diagonal Gaussian N(mu, var)."""
    return {k: mu[k] + var[k].sqrt() * torch.randn(mu[k].shape, generator=gen).to(mu[k]) for k in mu}


def _gaussian_samples(mu: Params, var: Params, n: int, gen) -> list[Params]:
    return [_perturb(mu, var, gen) for _ in range(n)]


def _natural_gradient_vi(model, x, y, loglik: LogLik, epochs: int, batch_size: int, lr: float, prior_std: float,
                         beta1: float, beta2: float, n_samples: int, temperature: float, curvature_batch: int | None,
                         damping: float, init: Params | None, seed: int, adam: bool, name: str) -> Posterior:
    """The shared loop of Noisy Adam and VOGN: weights drawn from N(μ, T/(N·(ŝ + γ + damping))), ŝ the
    bias-corrected EMA of squared per-example gradients; the mean steps by m̂/(√ŝ + ·) (Adam) or m̂/(ŝ + ·)."""
    gen = torch.Generator().manual_seed(seed)
    mu = {k: v.clone() for k, v in (init or params_of(model)).items()}
    n = len(y)
    gamma = 1.0 / (n * prior_std ** 2)  # the prior's precision per example
    damp = gamma + damping
    s = {k: torch.zeros_like(v) for k, v in mu.items()}
    m = {k: torch.zeros_like(v) for k, v in mu.items()}
    t = 0
    for _ in _epochs(epochs, loglik):
        for idx in _batches(n, batch_size, gen):
            var = {k: temperature / (n * (s[k] / (1 - beta2 ** t) + damp)) if t else
                   torch.full_like(s[k], prior_std ** 2 * 1e-4) for k in mu}
            t += 1
            gmean, sq = _grad_and_curvature(model, loglik, _perturb(mu, var, gen), x[idx], y[idx], curvature_batch)
            for k in mu:  # moments bias-corrected as in Adam
                s[k] = beta2 * s[k] + (1 - beta2) * sq[k]
                m[k] = beta1 * m[k] + (1 - beta1) * (gmean[k] + gamma * mu[k])
                s_hat = s[k] / (1 - beta2 ** t)
                mu[k] = mu[k] - lr * (m[k] / (1 - beta1 ** t)) / ((s_hat.sqrt() if adam else s_hat) + damp)
    var = {k: temperature / (n * (s[k] / (1 - beta2 ** t) + damp)) for k in mu}
    return Posterior(model, _gaussian_samples(mu, var, n_samples, gen), name, {"mean": mu, "var": var})


def noisy_adam(model, x, y, loglik: LogLik, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
               prior_std: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, n_samples: int = 10,
               temperature: float = 1.0, curvature_batch: int | None = None, damping: float = 0.0,
               init: Params | None = None, seed: int = 0) -> Posterior:
    """Zhang et al. 2018 (module docstring): Adam's update of the mean, the empirical Fisher as precision."""
    return _natural_gradient_vi(model, x, y, loglik, epochs, batch_size, lr, prior_std, beta1, beta2, n_samples,
                                temperature, curvature_batch, damping, init, seed, adam=True, name="noisy-adam")


def per_example_grads(model, loglik: LogLik, params: Params, x, y) -> Params:
    """Gradients of −log p(y_i | x_i, w) for every example at once (torch.func.vmap over grad); a likelihood
    that ``needs_attack`` (PGD) gets its adversarial inputs computed for the batch first."""
    if getattr(loglik, "needs_attack", False):
        xa = loglik.attack(model, params, x, y)

        def one_adv(p, xi, yi, ai):
            return -loglik(model, p, xi.unsqueeze(0), yi.unsqueeze(0), x_adv=ai.unsqueeze(0))

        return vmap(grad(one_adv), in_dims=(None, 0, 0, 0))(params, x, y, xa)

    def one(p, xi, yi):
        return -loglik(model, p, xi.unsqueeze(0), yi.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def _grad_and_curvature(model, loglik: LogLik, params: Params, x, y,
                        curvature_batch: int | None) -> tuple[Params, Params]:
    """Mean gradient of −log p over the batch and mean squared per-example gradient (the Gauss–Newton / empirical
    Fisher diagonal). With ``curvature_batch`` = m < batch size, the squares come from the first m examples only
    (the batch is already shuffled) and the mean gradient from one ordinary backward pass over the whole batch:
    per-example gradients cost ~40× a batch gradient through IBP, so this trades curvature noise for speed."""
    if curvature_batch is None or curvature_batch >= len(y):
        per = per_example_grads(model, loglik, params, x, y)
        return {k: v.mean(0) for k, v in per.items()}, {k: (v ** 2).mean(0) for k, v in per.items()}
    per = per_example_grads(model, loglik, params, x[:curvature_batch], y[:curvature_batch])
    q = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    g = torch.autograd.grad(-loglik(model, q, x, y) / len(y), list(q.values()))
    return dict(zip(q, g)), {k: (v ** 2).mean(0) for k, v in per.items()}


def vogn(model, x, y, loglik: LogLik, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
         prior_std: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, n_samples: int = 10,
         temperature: float = 1.0, curvature_batch: int | None = None, damping: float = 0.0,
         init: Params | None = None, seed: int = 0) -> Posterior:
    """Khan et al. 2018 / Osawa et al. 2019 (module docstring): a Newton-like step with the Gauss–Newton diagonal."""
    return _natural_gradient_vi(model, x, y, loglik, epochs, batch_size, lr, prior_std, beta1, beta2, n_samples,
                                temperature, curvature_batch, damping, init, seed, adam=False, name="vogn")


def swag(model, x, y, loglik: LogLik, epochs: int = 10, swa_start: int = 5, batch_size: int = 128,
         lr: float = 1e-2, prior_std: float = 1.0, rank: int = 10, n_samples: int = 10, init: Params | None = None,
         seed: int = 0) -> Posterior:
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.clone().requires_grad_(True) for k, v in (init or params_of(model)).items()}
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=0.9)
    n = len(y)
    mean = {k: torch.zeros_like(v) for k, v in params.items()}
    sq = {k: torch.zeros_like(v) for k, v in params.items()}
    devs: list[Params] = []
    count = 0
    for epoch in _epochs(epochs, loglik):
        for idx in _batches(n, batch_size, gen):
            loss = -(n / len(idx)) * loglik(model, params, x[idx], y[idx]) - _log_prior(params, prior_std)
            opt.zero_grad()
            (loss / n).backward()
            opt.step()
        if epoch >= swa_start:  # collect once per epoch
            count += 1
            with torch.no_grad():
                for k, v in params.items():
                    mean[k] = mean[k] + (v - mean[k]) / count
                    sq[k] = sq[k] + (v ** 2 - sq[k]) / count
                devs = (devs + [{k: params[k].detach() - mean[k] for k in params}])[-rank:]
    if count == 0:
        raise ValueError("SWAG collected no iterates: swa_start must be below epochs")
    diag = {k: (sq[k] - mean[k] ** 2).clamp(min=1e-30) for k in mean}
    K = len(devs)
    samples = []
    for _ in range(n_samples):
        z2 = torch.randn(K, generator=gen)
        s = {}
        for k in mean:
            z1 = torch.randn(mean[k].shape, generator=gen).to(mean[k])
            low = sum(z2[i] * devs[i][k] for i in range(K)) / math.sqrt(2 * max(K - 1, 1)) if K > 1 else 0
            s[k] = mean[k] + diag[k].sqrt() * z1 / math.sqrt(2) + low
        samples.append(s)
    return Posterior(model, samples, "swag", {"mean": mean, "sq_mean": sq, "deviations": devs})


def fisher_mass(model, x, y, loglik: LogLik, params: Params, prior_std: float = 1.0, batch_size: int = 128,
                batches: int = 50, seed: int = 0) -> Params:
    """A diagonal mass matrix for HMC: the empirical Fisher at ``params`` plus the prior precision. With G_b the
    gradient of a batch of b examples' log-likelihood, E[G_b²] ≈ b·E[g²] near a mode, so Σ_n g_n² ≈ (n/b)·E[G_b²],
    averaged over ``batches`` batches. With this mass, a step size of order 0.1–1 moves the chain across the
    posterior's width in every coordinate (Neal 2011, §5.4.1)."""
    gen = torch.Generator().manual_seed(seed)
    q = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    acc = {k: torch.zeros_like(v) for k, v in q.items()}
    n, count = len(y), 0
    for idx in _batches(n, batch_size, gen):
        if count == batches:
            break
        g = torch.autograd.grad(loglik(model, q, x[idx], y[idx]), list(q.values()))
        for k, gk in zip(q, g):
            acc[k] += gk.detach() ** 2 * (n / len(idx))
        count += 1
    return {k: v / count + 1 / prior_std ** 2 for k, v in acc.items()}


def hmc(model, x, y, loglik: LogLik, n_samples: int = 20, burn_in: int = 10, leapfrog: int = 10,
        step_size: float = 1e-3, prior_std: float = 1.0, batch_size: int | None = None, init: Params | None = None,
        seed: int = 0, mass: Params | str | None = None) -> Posterior:
    """Full-batch HMC (Neal 2011): leapfrog trajectories with a Metropolis accept/reject, the potential and its
    gradient summed over chunks of ``batch_size`` examples to bound memory; start from ``init`` (the paper starts
    robust HMC from an SGD solution). ``mass``: the diagonal mass matrix M (momenta ~ N(0, M), position steps
    ε·M⁻¹p); None is the identity, ``"fisher"`` is :func:`fisher_mass` at the start."""
    gen = torch.Generator().manual_seed(seed)
    w = {k: v.clone() for k, v in (init or params_of(model)).items()}
    if hasattr(loglik, "set_epoch"):
        loglik.set_epoch(None)  # sample the posterior of the full-ε likelihood
    if isinstance(mass, str):
        if mass != "fisher":
            raise ValueError(f"mass must be None, 'fisher' or a dict of tensors, got {mass!r}")
        mass = fisher_mass(model, x, y, loglik, w, prior_std, seed=seed)
    M = {k: torch.ones_like(v) for k, v in w.items()} if mass is None else {k: mass[k].to(w[k]) for k in w}
    if any(bool((m <= 0).any()) for m in M.values()):
        raise ValueError("the mass matrix must be positive")

    chunk = batch_size or len(y)

    def grad_u(p: Params) -> tuple[torch.Tensor, Params]:
        q = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        u = -_log_prior(q, prior_std)
        g = list(torch.autograd.grad(u, list(q.values())))
        for i in range(0, len(y), chunk):
            ui = -loglik(model, q, x[i:i + chunk], y[i:i + chunk])
            g = [a + b for a, b in zip(g, torch.autograd.grad(ui, list(q.values())))]
            u = u + ui.detach()
        return u.detach(), dict(zip(q, g))

    samples: list[Params] = []
    accepted = 0
    u, g = grad_u(w)
    for it in _progress(range(burn_in + n_samples), f"HMC ({burn_in} burn-in)"):
        # the step size is jittered per trajectory: a fixed length near half an oscillation period makes the
        # chain bounce between mirror points without ever losing energy
        eps = step_size * (0.5 + torch.rand(1, generator=gen).item())
        r = {k: torch.randn(v.shape, generator=gen).to(v) * M[k].sqrt() for k, v in w.items()}
        h0 = u + sum((v ** 2 / M[k]).sum() for k, v in r.items()) / 2
        q, p, gq = dict(w), {k: r[k] - eps / 2 * g[k] for k in r}, g
        for step in range(leapfrog):
            q = {k: q[k] + eps * p[k] / M[k] for k in q}
            uq, gq = grad_u(q)
            if step < leapfrog - 1:
                p = {k: p[k] - eps * gq[k] for k in p}
        p = {k: p[k] - eps / 2 * gq[k] for k in p}
        h1 = uq + sum((v ** 2 / M[k]).sum() for k, v in p.items()) / 2
        if torch.rand(1, generator=gen).item() < math.exp(min(0.0, (h0 - h1).item())):
            w, u, g = q, uq, gq
            accepted += it >= burn_in
        if it >= burn_in:
            samples.append({k: v.detach().clone() for k, v in w.items()})  # a copy, never an alias
    info = {"accept_rate": accepted / max(n_samples, 1)}
    if mass is not None:
        info["mass"] = M
    return Posterior(model, samples, "hmc", info)
