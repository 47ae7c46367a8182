"""Where the executor's attempts run: the :class:`Workers` protocol and Ray tasks pinned to
nodes (:class:`TaskWorkers`); the actor pool's actors implement the same protocol.

The loop (``ray_ft.runtime.loop``) starts, stops and follows attempts only through this
protocol, so the executor and the actor pool share one loop and override nothing of it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft.core.events import Event, NodesChanged
from ray_ft.core.work import Attempt, Work
from ray_ft.failures import FailureEvent
from ray_ft.nodes import alive_resources
from ray_ft.runtime.batch_task import batch_task, pack
from ray_ft.runtime.cluster_link import NodeWatcher
from ray_ft.runtime.remote import call_arguments, callable_blob, trampoline

__all__ = ["TaskWorkers", "WorkerGoneError", "Workers"]

log = logging.getLogger(__name__)

_REMOTE_CACHE_SIZE = 4096


class WorkerGoneError(RuntimeError):
    """The worker an attempt was placed on is gone (an actor that was killed meanwhile):
    the attempt is re-placed, charging nobody."""


class Workers(Protocol):
    """What the loop needs of the place attempts run. A worker id is what the scheduler
    calls a node: a Ray node for tasks, an actor for the pool."""

    cancel_kills_worker: bool  # stopping an attempt kills its worker (an actor call)
    batches: bool  # tiny calls may be packed into one Ray task
    demands: bool  # queued calls are resource demand the autoscaler should see
    refresh_s: float  # how often the worker table is looked at

    def target(self, fn: Callable[..., Any], is_remote: bool) -> tuple[Any, bytes | None]:
        """What a Work runs: (remote function or stand-in, pickled callable or None)."""
        ...

    def start(self, work: Work, worker_id: str) -> Any:
        """Start one attempt there; returns its ObjectRef (WorkerGoneError: re-place it)."""
        ...

    def start_batch(self, attempts: tuple[Attempt, ...]) -> Any:
        """Start a batch of attempts as one task; returns its ObjectRef."""
        ...

    def stop(self, ref: Any, attempt: Attempt) -> None:
        """Stop a running attempt (a timeout, an abandoned node, a cancel)."""
        ...

    def died(self, attempt: Attempt, error: BaseException) -> str | None:
        """After a failed attempt: why its worker is gone with it, or None."""
        ...

    def node_events(self, events: list[FailureEvent]) -> list[FailureEvent]:
        """Failure events as the manager takes them (named by Ray node)."""
        ...

    def poll(self, due: bool, current: dict[str, dict[str, float]]) -> list[Event]:
        """News of the worker table (``due``: time to look again); never blocks long."""
        ...

    def translate(self, polled: list[Event]) -> list[Event]:
        """The manager's node news, as the scheduler's workers see it."""
        ...

    def close(self) -> None:
        """The loop ended: stop any thread of its own."""
        ...


class TaskWorkers:
    """Ray tasks pinned to nodes (NodeAffinity, soft=False), run once each (max_retries=0)."""

    cancel_kills_worker = False  # ray.cancel stops one task, not its worker
    batches = True
    demands = True
    refresh_s = 1.0

    def __init__(self, setup: bytes | None) -> None:
        self.setup = setup  # the initializer, run once per worker process
        self._remotes: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._watcher = NodeWatcher()
        self._looked = False  # the first look at the node table is made at once

    def target(self, fn: Callable[..., Any], is_remote: bool) -> tuple[Any, bytes | None]:
        """A remote function as it is, any other callable pickled once."""
        return (fn, None) if is_remote else (None, callable_blob(fn))

    def start(self, work: Work, worker_id: str) -> Any:
        remote = self._remote_for(work, worker_id)
        if work.remote_fn is not None:
            return remote.remote(*work.args, **work.kwargs)
        assert work.blob is not None
        return remote.remote(*call_arguments(work.blob, self.setup, work.args, work.kwargs))

    def start_batch(self, attempts: tuple[Attempt, ...]) -> Any:
        members, refs = pack([a.work for a in attempts])
        head = attempts[0]
        remote = self._remote_for(head.work, head.node_id, batch=True)
        return remote.remote(head.work.blob, self.setup, members, *refs)

    def stop(self, ref: Any, attempt: Attempt) -> None:
        ray.cancel(ref, force=True)

    def died(self, attempt: Attempt, error: BaseException) -> str | None:
        return None  # a task's failure leaves its node to the manager's verdicts

    def node_events(self, events: list[FailureEvent]) -> list[FailureEvent]:
        return events  # worker ids are node ids

    def poll(self, due: bool, current: dict[str, dict[str, float]]) -> list[Event]:
        """Ray's node table, read by a thread of its own (a GCS restart stalls no caller);
        the first look is made here and now (never place blind)."""
        if due and not self._looked:
            self._looked = True
            try:
                nodes = alive_resources()
            except Exception as exc:
                log.debug("ray.nodes() failed: %s", exc)
            else:
                return [NodesChanged(nodes)] if nodes != current else []
        elif due:
            self._watcher.want()
        latest = self._watcher.take()
        return [NodesChanged(latest)] if latest is not None and latest != current else []

    def translate(self, polled: list[Event]) -> list[Event]:
        return polled

    def close(self) -> None:
        self._watcher.stop()

    def _remote_for(self, work: Work, node_id: str, *, batch: bool = False) -> Any:
        """The remote function with this work's options, pinned to ``node_id`` (cached)."""
        key = (node_id, work.name, work.spec.key, work.remote_fn, batch)
        remote = self._remotes.get(key)
        if remote is None:
            base = work.remote_fn if work.remote_fn is not None else trampoline
            if batch:
                base = batch_task
            remote = base.options(
                **work.spec.options,
                name=f"{work.name} (batch)" if batch else work.name,
                max_retries=0,
                retry_exceptions=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            self._remotes[key] = remote
            if len(self._remotes) > _REMOTE_CACHE_SIZE:
                self._remotes.popitem(last=False)
        return remote
