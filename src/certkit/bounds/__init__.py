"""Abstract domains. Every domain implements the transfer functions of the ops in :mod:`certkit.graph`."""

from certkit.bounds.interval import Bounds, interval_bounds

__all__ = ["Bounds", "interval_bounds"]
