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
