"""Checkpoints, configs and result files.

A model checkpoint is one ``.safetensors`` file: the weights, and in its header a JSON document with the
architecture (name, input shape, classes, normalisation), the config, metrics and the certkit version. Loading
rebuilds the architecture from :mod:`certkit.models` and never executes code from the file.

Results are JSON lines appended one row at a time and flushed; :class:`ResultsWriter` reads what a killed run
already wrote (dropping a torn last line) so that the run resumes without losing or duplicating a row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import certkit
from certkit.errors import CertkitError, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class CheckpointError(CertkitError, RuntimeError):
    """A checkpoint is missing, corrupt, or not a certkit model."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(path: str | os.PathLike, model: nn.Module, arch: dict[str, Any], **meta: Any) -> Path:
    """Write ``model``'s weights and metadata (``arch`` = {name, in_shape, num_classes, mean, std, kwargs})."""
    path = Path(path)
    header = {"certkit_version": certkit.__version__, "arch": arch, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"certkit": json.dumps(header)}))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a certkit checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["certkit"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a certkit checkpoint, or is corrupt or truncated ({e})") from e


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns (model in eval mode, metadata)."""
    from certkit.models import build

    meta = read_metadata(path)
    arch = meta.get("arch") or {}
    try:
        model = build(arch["name"], arch["in_shape"], arch["num_classes"], arch.get("mean"), arch.get("std"),
                      **arch.get("kwargs", {}))
    except (KeyError, TypeError, ValueError) as e:  # ValueError: e.g. a std of 0 or a mean that is not a number
        raise CheckpointError(f"{path}: cannot rebuild the architecture from its metadata ({e})") from e
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit architecture {arch['name']!r} ({e})") from e
    return model.to(device).eval(), meta


CONFIGS = Path(__file__).with_name("configs")  # the shipped configs (the repository's configs/ links here)


def config_path(name: str | os.PathLike) -> Path:
    """``name`` as a file, else a shipped config by name (``mnist-ibp-0.1`` or ``mnist-ibp-0.1.toml``, as
    listed by ``certkit configs``); a name that is neither is an error suggesting the closest shipped names."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIGS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if len(path.parts) == 1 and shipped.is_file():
        return shipped
    import difflib

    names = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    close = difflib.get_close_matches(path.stem, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `certkit configs` lists the shipped ones"
    raise FileNotFoundError(f"config not found: {name} (neither a file nor a shipped config){hint}")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML config: a file, or a shipped config by name (:func:`config_path`)."""
    path = config_path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from e


def _fits(value: Any, tp: Any) -> bool:
    """Whether a TOML value has the type ``tp`` of a config field (int for float is fine, bool for int is not)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_config_types(values: dict[str, Any], field_types: dict[str, Any], names: dict[str, str] | None = None,
                       where: str = "config") -> None:
    """Raise :class:`~certkit.errors.ConfigError` naming the key (``names`` maps a field to its TOML key) of the
    first value whose type is not its field's."""
    for key, value in values.items():
        tp = field_types.get(key, Any)
        if not _fits(value, tp):
            shown = (names or {}).get(key, key)
            raise ConfigError(f"{where}: '{shown}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def read_dataclass(cls: type, raw: dict[str, Any], sections: dict[str, dict[str, str]] | None = None,
                   flat: tuple[str, ...] | None = ("train",), prefix: str = "") -> tuple[Any, dict[str, Any]]:
    """A config dataclass from a TOML dict, the one reader of every config: top-level keys and the keys of the
    ``flat`` sections (every other table when ``flat`` is None) are fields by name; the keys of ``sections[s]``
    map to fields as that table says; a table named like a field whose type is a dataclass is read into that
    dataclass the same way. Unknown keys and values of the wrong type raise
    :class:`~certkit.errors.ConfigError` naming the key as written. Returns (instance, the fields given)."""
    sections = sections or {}
    hints = typing.get_type_hints(cls)
    nested = {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    values: dict[str, Any] = {}
    names: dict[str, str] = {}  # field -> the key as written in the TOML file
    for key, value in raw.items():
        if key in nested:
            if not isinstance(value, dict):
                raise ConfigError(f"config: '{prefix}{key}' must be a table ([{prefix}{key}]), got {value!r}")
            values[key], _ = read_dataclass(nested[key], value, flat=(), prefix=f"{prefix}{key}.")
            names[key] = prefix + key
        elif key in sections and isinstance(value, dict):
            for k, v in value.items():
                if k not in sections[key]:
                    raise ConfigError(f"unknown key '{prefix}{key}.{k}' in config")
                values[sections[key][k]], names[sections[key][k]] = v, f"{prefix}{key}.{k}"
        elif isinstance(value, dict) and (flat is None or key in flat):
            for k, v in value.items():
                values[k], names[k] = v, f"{prefix}{key}.{k}"
        else:
            values[key], names[key] = value, prefix + key
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(names[k] for k in set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    check_config_types(values, hints, names)
    return cls(**values), values


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.key=VALUE`` entries (``--set`` on the command line) in a config dict, in place. VALUE is read
    as a TOML value (``2``, ``1e-3``, ``[0, 0, 2, 2]``, ``true``, ``"text"``); anything that is not one is kept as a
    bare string (a path)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set expects SECTION.KEY=VALUE or KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return raw


class InUseError(CertkitError, RuntimeError):
    """Another writer (another process, or another open in this one) holds the results file or run directory."""


def hold_lock(path: str | os.PathLike) -> IO[str] | None:
    """Take an exclusive advisory lock on ``path`` (created if missing) for as long as the returned file is open.

    A second writer of the same results (two resumed runs started by mistake, say) fails at once with
    :class:`InUseError` instead of duplicating or interleaving rows. The lock goes with the process, so a killed
    run leaves nothing to clean up. Where ``fcntl`` is missing (Windows) nothing is locked and None is returned.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InUseError(f"{path} is in use by another run (a second process writing the same results?); "
                         "stop it first or choose another output") from None
    return f


class ResultsWriter:
    """Append-only JSON-lines results keyed by ``key`` (e.g. the test-set index).

    ``done`` holds the keys already written; rows with those keys are skipped on resume. A torn last line (a
    kill in mid-write) is removed on open. The file is locked while the writer is open (:func:`hold_lock`):
    a second writer of it raises :class:`InUseError`. ``close()`` (or leaving a ``with`` block) releases it.
    """

    def __init__(self, path: str | os.PathLike, key: str = "idx", header: dict[str, Any] | None = None):
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(self.path)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            good = []
            text = self.path.read_text()
            for line in text.splitlines(keepends=True):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # torn tail: keep everything before it
                if not line.endswith("\n"):
                    break
                good.append(line)
                self.rows.append(row)
            if len("".join(good)) != len(text):
                self.path.write_text("".join(good))
        self.done = {r[key] for r in self.rows if key in r}
        self.header = header
        if header is not None:
            if not self.rows:
                self._write([{"_header": True, **header}])
                self.rows.append({"_header": True, **header})
            else:
                old = {k: v for k, v in self.rows[0].items() if k not in ("_header", "certkit_version")}
                new = {k: v for k, v in header.items() if k != "certkit_version"}
                if not self.rows[0].get("_header") or old != new:
                    raise ValueError(f"{self.path} holds results of a different run ({old}); use another file")

    def _write(self, rows: Iterable[dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        new = [r for r in rows if r[self.key] not in self.done]
        self._write(new)
        self.rows += new
        self.done.update(r[self.key] for r in new)

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r.get("_header")]

    def close(self) -> None:
        """Release the file's lock (the rows are already on disk)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CheckpointError", "InUseError", "ResultsWriter", "hold_lock", "load_config", "load_model", "read_metadata",
           "save_model"]
