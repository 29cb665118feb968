"""Generative models with certified bounds: the provably robust VAE."""

from certkit.generative.vae import VAE, elbo_attack

__all__ = ["VAE", "elbo_attack"]
