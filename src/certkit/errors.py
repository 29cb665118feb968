"""certkit's errors: every problem with what a user passes in (a file, a key, an argument) is a
:class:`CertkitError` whose message names it. Each subclass also derives from the built-in exception it refines
(``ValueError``, ``TypeError``, ``RuntimeError``), so existing ``except`` clauses keep working."""

from __future__ import annotations


class CertkitError(Exception):
    """Base class of the errors certkit raises about its inputs."""


class ConfigError(CertkitError, ValueError):
    """A config key that does not exist or a value of the wrong type or range (the message names the key)."""


class OnnxError(CertkitError, ValueError):
    """An ONNX file that cannot be read or whose tensors do not fit together (the message names the file)."""


class MissingDependencyError(CertkitError, ImportError):
    """An optional dependency that a feature needs is not installed (the message names the extra to install)."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` (an optional dependency) or raise :class:`MissingDependencyError` saying which extra
    of ``pip install 'certkit[...]'`` brings it, for ``purpose`` (e.g. "loading ONNX networks")."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {module}, which is not installed: "
                                     f"pip install 'certkit[{extra}]'") from None
