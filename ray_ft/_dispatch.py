"""The executor's units of work, resource shapes, and the remote trampoline.

One generic remote function runs every plain callable: the callable travels as
cloudpickle bytes (pickled once per callable on the driver, unpickled once per worker),
so lambdas and builtins work and no code is re-registered per new callable.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray import cloudpickle

from ray_ft.failures import FailureEvent
from ray_ft.manager import Task

__all__ = ["Attempt", "CallSpec", "Shape", "Work", "callable_blob", "trampoline"]

_UNBOUNDED_SLOTS = 1000  # a task that asks for no resource at all
_BLOB_CACHE_SIZE = 256

_blob_lock = threading.Lock()
_blobs: collections.OrderedDict[Any, bytes] = collections.OrderedDict()
_worker_fns: collections.OrderedDict[bytes, Callable[..., Any]] = collections.OrderedDict()


def callable_blob(fn: Callable[..., Any]) -> bytes:
    """cloudpickle bytes of ``fn``, cached per callable; unpicklable callables raise TypeError."""
    try:
        hash(fn)
        key: Any = fn
    except TypeError:
        key = None
    if key is not None:
        with _blob_lock:
            blob = _blobs.get(key)
            if blob is not None:
                _blobs.move_to_end(key)
                return blob
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as exc:
        msg = (
            f"cannot pickle {fn!r} to ship it to a Ray worker: {exc}; pass a function "
            "whose closure holds only picklable objects (no locks, sockets or open files)"
        )
        raise TypeError(msg) from exc
    if key is not None:
        with _blob_lock:
            _blobs[key] = blob  # holding fn keeps its id from being reused
            if len(_blobs) > _BLOB_CACHE_SIZE:
                _blobs.popitem(last=False)
    return blob


def _run_blob(blob: bytes, /, *args: Any, **kwargs: Any) -> Any:
    """Run the pickled callable. The call's arguments are the task's own top-level
    arguments, so Ray resolves ObjectRefs among them (keyword ones too) as it would for
    ``f.remote(*args, **kwargs)``; refs nested in containers stay refs, as in Ray."""
    fn = _worker_fns.get(blob)
    if fn is None:
        fn = cloudpickle.loads(blob)
        _worker_fns[blob] = fn
        if len(_worker_fns) > _BLOB_CACHE_SIZE:
            _worker_fns.popitem(last=False)
    return fn(*args, **kwargs)


trampoline = ray.remote(max_retries=0)(_run_blob)


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """The resources one attempt asks for; attempts are counted per node and shape."""

    key: tuple[tuple[str, float], ...]
    timed: bool = False

    @classmethod
    def of(cls, options: Mapping[str, Any], *, timed: bool) -> Shape:
        """From Ray task options (num_cpus defaults to 1, as in Ray)."""
        request: dict[str, float] = {"CPU": float(options.get("num_cpus", 1) or 0)}
        if options.get("num_gpus"):
            request["GPU"] = float(options["num_gpus"])
        if options.get("memory"):
            request["memory"] = float(options["memory"])
        for name, amount in (options.get("resources") or {}).items():
            request[name] = float(amount)
        return cls(tuple(sorted((k, v) for k, v in request.items() if v > 0)), timed)

    def slots_on(self, node_resources: Mapping[str, float]) -> int:
        """How many such attempts fit on a node at once."""
        if not self.key:
            return _UNBOUNDED_SLOTS
        return min(
            math.floor(node_resources.get(name, 0.0) / amount + 1e-9) for name, amount in self.key
        )

    def describe(self) -> str:
        """Human-readable request, e.g. 'CPU=1, GPU=1'."""
        return ", ".join(f"{k}={v:g}" for k, v in self.key) or "no resources"


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """Everything derived from a set of task options, computed once per options dict."""

    options: dict[str, Any]
    timeout: float | None
    name: str | None
    shape: Shape
    key: tuple[Any, ...]

    @classmethod
    def of(cls, options: Mapping[str, Any], default_timeout: float | None) -> CallSpec:
        """Split ray_ft's own options (timeout, name) from Ray's."""
        ray_options = {k: v for k, v in options.items() if k not in ("timeout", "name")}
        timeout = options.get("timeout", default_timeout)
        return cls(
            ray_options,
            timeout,
            options.get("name"),
            Shape.of(ray_options, timed=timeout is not None),
            tuple(sorted((k, repr(v)) for k, v in ray_options.items())),
        )


@dataclasses.dataclass(slots=True, eq=False)
class Work:
    """One submitted call and everything its retries need (Task made on first failure)."""

    task_id: str
    name: str
    remote_fn: Any
    blob: bytes | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spec: CallSpec
    future: cf.Future[Any]
    task: Task | None = None
    events: list[FailureEvent] | None = None
    avoid: frozenset[str] = frozenset()
    first_failure_at: float | None = None
    started: bool = False  # its future was set running (on its first launch)
    placement_failures: int = 0

    @property
    def shape(self) -> Shape:
        """The resources one attempt asks for."""
        return self.spec.shape

    @property
    def timeout(self) -> float | None:
        """Seconds one attempt may run, or None."""
        return self.spec.timeout

    @property
    def attempts(self) -> int:
        """Failures so far (0 before the first attempt has failed)."""
        return 0 if self.task is None else self.task.attempts

    def failure_task(self) -> Task:
        """The manager's Task for this work, created on first need."""
        if self.task is None:
            self.task = Task(self.task_id, name=self.name)
        return self.task


@dataclasses.dataclass(slots=True, eq=False)
class Attempt:
    """One run of a Work on one node."""

    work: Work
    node_id: str
    deadline: float | None
    trial: bool = False
