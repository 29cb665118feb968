"""Certifiably robust Bayesian neural networks: posterior-predictive certificates (Wicker et al. 2021)."""

from certkit.bayes.certify import certify_posterior, hoeffding_confidence, max_radius_posterior, predictive

__all__ = ["certify_posterior", "hoeffding_confidence", "max_radius_posterior", "predictive"]
