"""The executor's units of work and resource shapes (pure: no Ray).

A Work is one submitted call with everything its retries need; an Attempt is one run of it
on one node; a Shape is the resources one attempt asks for, counted per node.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from ray_ft.failures import FailureEvent

__all__ = ["Attempt", "CallSpec", "Group", "Shape", "Work", "WorkState"]

# queued: waits for a slot; backoff: waits out a retry delay on the timer heap; running: an
# attempt (or two copies) in flight; done: ended once, by Scheduler._end, with its outcome


class WorkState(enum.StrEnum):
    """Where a call is: waiting for a slot, waiting out a retry delay, running, ended."""

    QUEUED = "queued"
    BACKOFF = "backoff"
    RUNNING = "running"
    DONE = "done"


_OWN_OPTIONS = ("timeout", "name", "speculation")  # ray_ft's; never handed to Ray
_UNBOUNDED_SLOTS = 1000  # a task that asks for no resource at all


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """The resources one attempt asks for; attempts are counted per node and shape."""

    key: tuple[tuple[str, float], ...]
    timed: bool = False
    _hash: int = dataclasses.field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        # a shape is a dict key on every placement event: hash it once
        object.__setattr__(self, "_hash", hash((self.key, self.timed)))

    def __hash__(self) -> int:
        return self._hash

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
    speculation: bool | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any], default_timeout: float | None) -> CallSpec:
        """Split ray_ft's own options (timeout, name, speculation) from Ray's."""
        ray_options = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
        timeout = options.get("timeout", default_timeout)
        return cls(
            ray_options,
            timeout,
            options.get("name"),
            Shape.of(ray_options, timed=timeout is not None),
            tuple(sorted((k, repr(v)) for k, v in ray_options.items())),
            options.get("speculation"),
        )

    def with_memory(self, memory: float) -> CallSpec:
        """The same call asking for ``memory`` bytes (an out-of-memory retry)."""
        own = {k: getattr(self, k) for k in ("timeout", "name", "speculation")}
        return CallSpec.of({**self.options, "memory": memory, **own}, self.timeout)


@dataclasses.dataclass(slots=True, eq=False)
class Work:
    """One submitted call and everything its retries need."""

    task_id: str
    name: str
    remote_fn: Any
    blob: bytes | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    spec: CallSpec
    future: cf.Future[Any]
    failures: int = 0  # attempts that failed and were charged (the retry count)
    events: list[FailureEvent] | None = None
    avoid: frozenset[str] = frozenset()
    first_failure_at: float | None = None
    started: bool = False  # its future was set running (on its first launch)
    placement_failures: int = 0
    unplaceable: frozenset[str] = frozenset()  # nodes Ray said cannot run it: never again
    speculate: bool = False  # may get a backup attempt when it straggles
    cohort: Any = None  # the calls of its callable submitted with it (ray_ft.core.speculation)
    speculated: bool = False  # a backup attempt was started (never a second one)
    stranded_since: float | None = None  # since when no usable node can take it at all
    kind: str = ""  # the callable's identity: paces, batches and memory are learned per kind
    batch_cap: int | None = None  # most members of a batch it may join (chunksize, a split)
    given_up: bool = False  # the caller gave it up (Scheduler.give_up): never run again
    running: Attempt | None = None  # its one attempt in flight, for a call without backups
    state: WorkState = WorkState.QUEUED

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = self.name

    @property
    def shape(self) -> Shape:
        """The resources one attempt asks for."""
        return self.spec.shape

    @property
    def timeout(self) -> float | None:
        """Seconds one attempt may run, or None."""
        return self.spec.timeout


@dataclasses.dataclass(slots=True, eq=False)
class Attempt:
    """One run of a Work on one node."""

    work: Work
    node_id: str
    deadline: float | None
    trial: bool = False
    attempt_id: int = 0
    launched_at: float = 0.0
    queued_behind: bool = False  # launched while the node's slots were all taken
    backup: bool = False  # a speculative copy of a straggling attempt
    group: Group | None = None  # the batch it runs in, one Ray task for all its members
    ref: Any = None  # the runner's handle on its run (an ObjectRef), opaque here


@dataclasses.dataclass(slots=True, eq=False)
class Group:
    """Attempts of one callable launched together as one Ray task (a batch): they hold
    one slot of their node, share one deadline and come back together."""

    attempts: list[Attempt]
    live: int = 0  # members still in flight (the slot is freed when none is)
    runtime: float | None = None  # per member, learned once from the first result
    expected: float | None = None  # seconds the whole batch should take, from the pace
    ref: Any = None  # the runner's handle on the one task (an ObjectRef), opaque here
