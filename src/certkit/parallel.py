"""Where per-input work runs: in this process (the default), or sharded over Ray workers, on a local runtime
(``workers=N``) or on a cluster (``address=...``).

Every long command (``certify``, ``radius``, ``smooth certify``, ``bayes eval``, ``vnncomp``) states its work as
:class:`Shard` s, a few inputs each, and a task function ``fn(shared, items, **args)`` that decides one shard.
``shared`` (the model, the data) is put into Ray's object store once and each worker deserialises it once
(:func:`_shared`), not per task. :meth:`Executor.map` yields ``(shard, result)`` as shards finish; the caller,
the only writer, appends the rows to its resumable results file, so a run on workers writes the same file as a
run in one process (rows keyed by input, in the order they finish).

Faults: a worker that dies is replaced and its task retried (``retries`` times); an exception in a task is
narrowed down to the input that raised it, which becomes an error row (``error_row``), and the run goes on; an
:class:`UnsoundError` (a certified input broken by an attack) stops the run wherever it is raised. Ctrl-C
cancels the outstanding tasks; the rows already written stay, and the run resumes from them.

Ray is imported only when an :class:`Executor` has workers or an address (``pip install certkit[ray]``).
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from certkit.errors import CertkitError


class UnsoundError(AssertionError):
    """A certificate contradicted by a concrete input (an attack broke a certified point): a bug, never a row."""


@dataclass
class Shard:
    """One task: ``items`` (the inputs it decides, e.g. positions in the data set) and ``args`` (the rest of what
    the task function takes, the same for every item)."""

    items: list
    args: dict = field(default_factory=dict)

    def split(self) -> list[Shard]:
        return [Shard([item], self.args) for item in self.items]


def shards(items: Iterable, size: int, **args: Any) -> list[Shard]:
    """``items`` cut into shards of ``size`` (the last may be smaller), each with ``args``."""
    items = list(items)
    if size < 1:
        raise CertkitError(f"shard size must be at least 1, got {size}")
    return [Shard(items[i:i + size], dict(args)) for i in range(0, len(items), size)]


@contextmanager
def seeded(*key: Any) -> Iterator[None]:
    """Torch's RNG seeded by ``key`` inside the block, and restored after it: a task's random draws (PGD's random
    starts) then depend on what it decides, not on the process, worker or order it runs in."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(zlib.crc32(repr(key).encode()))
        yield


_CACHE: dict[str, Any] = {}  # in a worker: the shared payload of the current run, by object id


def _shared(box: list) -> Any:
    """The shared payload behind the object reference in ``box``, fetched once per worker process (the box
    keeps Ray from resolving the reference for every task)."""
    import ray

    key = box[0].hex()
    if key not in _CACHE:
        _CACHE.clear()  # one run at a time: drop the previous run's model
        _CACHE[key] = ray.get(box[0])
    return _CACHE[key]


def run_isolated(fn: Callable, shared: Any, shard: Shard, error_row: Callable[[Any, dict, str], dict] | None) -> list:
    """``fn`` on the shard; if it raises (anything but :class:`UnsoundError`), again input by input, and each
    input that raises on its own becomes ``error_row(item, shard.args, message)`` (or re-raises without
    ``error_row``)."""
    try:
        return fn(shared, shard.items, **shard.args)
    except UnsoundError:
        raise
    except Exception as e:
        if len(shard.items) > 1:
            return [row for one in shard.split() for row in run_isolated(fn, shared, one, error_row)]
        if error_row is None:
            raise
        return [error_row(shard.items[0], shard.args, f"{type(e).__name__}: {e}"[:500])]


def _task(fn: Callable, box: list, shard: Shard, threads: int) -> tuple[list, str]:
    """What a Ray worker runs: the shard, with ``threads`` torch threads; returns its result and the node's id."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    shared, error_row = _shared(box)
    result = run_isolated(fn, shared, shard, error_row)
    return result, ray.get_runtime_context().get_node_id()


@dataclass
class Executor:
    """Runs shards in this process (no ``workers``, no ``address``), on a local Ray runtime with ``workers``
    worker processes, or on the Ray cluster at ``address`` ("auto" for the one ``ray start`` made on this machine;
    ``ray://host:10001`` for a remote head). Each task takes ``threads`` CPUs and that many torch threads, and
    ``gpus`` GPUs (e.g. 0.5 to put two workers on one GPU; the task function moves the model to its device).
    ``tasks_per_node`` counts the finished tasks per Ray node id."""

    workers: int | None = None
    address: str | None = None
    threads: int = 1
    gpus: float = 0.0
    retries: int = 3
    tasks_per_node: Counter = field(default_factory=Counter)
    _started: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise CertkitError(f"workers must be at least 1, got {self.workers}")
        if self.threads < 1:
            raise CertkitError(f"threads per worker must be at least 1, got {self.threads}")

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.address is not None

    def describe(self) -> str:
        if not self.distributed:
            return "in this process"
        import ray

        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray runtime"
        cpus = int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else self.workers
        return f"{where} ({cpus} CPUs, {self.threads} thread(s) per task)"

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise CertkitError("--workers/--address run on Ray, which is not installed: pip install 'certkit[ray]'"
                               ) from None
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local runtime needs no token
            env = {"env_vars": {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}}
            if self.address:
                ray.init(address=self.address, runtime_env=env, log_to_driver=False, logging_level="WARNING")
            else:
                ray.init(num_cpus=self.workers * self.threads, runtime_env=env, include_dashboard=False,
                         log_to_driver=False, logging_level="WARNING")
            self._started = True
        return ray

    def map(self, fn: Callable, shared: Any, work: Iterable[Shard],
            error_row: Callable[[Any, dict, str], dict] | None = None) -> Iterator[tuple[Shard, Any]]:
        """``(shard, fn(shared, shard.items, **shard.args))`` for every shard, as they finish: in order in this
        process (exceptions propagate, as in a plain loop), in finishing order on Ray (an input whose task raises
        becomes ``error_row(item, shard.args, message)`` when given). ``fn`` must be importable by the workers (a
        module-level function) and ``shared`` picklable, on the CPU or on a device every worker has."""
        work = list(work)
        if not self.distributed:
            for s in work:
                yield s, fn(shared, s.items, **s.args)
            return
        ray = self._ray()
        remote = ray.remote(_task).options(num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.retries,
                                           retry_exceptions=False)
        box = [ray.put((shared, error_row))]  # once into the object store, once per worker out of it
        pending = {remote.remote(fn, box, s, self.threads): s for s in work}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
                for ref in done:
                    s = pending.pop(ref)
                    result, node = ray.get(ref)
                    self.tasks_per_node[node] += 1
                    yield s, result
        finally:  # Ctrl-C, an unsound certificate, or the caller stopped early: stop what is still running
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Shut down the Ray runtime this executor started (a cluster it joined keeps running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Executor", "Shard", "UnsoundError", "run_isolated", "seeded", "shards"]
