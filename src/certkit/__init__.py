"""certkit: certified adversarial robustness on one bound-propagation engine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("certkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from certkit.bounds import Bounds, interval_bounds  # noqa: E402
from certkit.graph import UnsupportedOpError, to_graph  # noqa: E402
from certkit.nn import Normalize, Residual  # noqa: E402
from certkit.specs import Box, L1Ball, L2Ball, LinearSpec, LinfBall, Property, ball, margin_spec  # noqa: E402

__all__ = [
    "Bounds", "Box", "L1Ball", "L2Ball", "LinearSpec", "LinfBall", "Normalize", "Property", "Residual",
    "UnsupportedOpError", "ball", "interval_bounds", "margin_spec", "to_graph", "__version__",
]
