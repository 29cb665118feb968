"""Adversarial attacks: empirical upper bounds on robustness, the counterpart of certificates."""

from certkit.attacks.pgd import AttackResult, pgd

__all__ = ["AttackResult", "pgd"]
