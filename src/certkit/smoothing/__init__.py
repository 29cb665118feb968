"""Randomized smoothing: noise, the smoothed classifier (predict/certify), and certified radii."""

from certkit.smoothing.smooth import (
    CERTIFICATES,
    CompiledBase,
    Noise,
    Smooth,
    SmoothResult,
    certified_accuracy,
    noisy_forward,
)

__all__ = ["CERTIFICATES", "CompiledBase", "Noise", "Smooth", "SmoothResult", "certified_accuracy", "noisy_forward"]
