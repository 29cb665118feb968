"""Randomized smoothing: noise, the smoothed classifier (predict/certify), and certified radii."""

from certkit.smoothing.smooth import CERTIFICATES, Noise, Smooth, SmoothResult, certified_accuracy

__all__ = ["CERTIFICATES", "Noise", "Smooth", "SmoothResult", "certified_accuracy"]
