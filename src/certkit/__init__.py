"""certkit: certified adversarial robustness on one bound-propagation engine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("certkit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

# The public names load on first use (PEP 562), so that ``certkit --help`` answers before torch is imported.
_EXPORTS = {
    "Bounds": "certkit.bounds", "interval_bounds": "certkit.bounds",
    "UnsupportedOpError": "certkit.graph", "to_graph": "certkit.graph",
    "Normalize": "certkit.nn", "Residual": "certkit.nn",
    **dict.fromkeys(["Box", "L1Ball", "L2Ball", "LinearSpec", "LinfBall", "Property", "ball", "margin_spec"],
                    "certkit.specs"),
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'certkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
