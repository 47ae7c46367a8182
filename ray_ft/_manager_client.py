"""How an executor talks to the fault-tolerance state: a remote actor or an in-process one.

Both clients give the executor the same non-blocking calls: a cached exclusion snapshot
that refreshes in the background, batched failure reports, and trial slots for HALF_OPEN
nodes. The fast path (no failures) costs one remote call per refresh, not per task.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ray

from ray_ft.failures import FailureEvent
from ray_ft.manager import FaultToleranceManager, WorkerStatus

__all__ = ["ActorManagerClient", "Exclusions", "LocalManagerClient", "ManagerClient"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Exclusions:
    """A snapshot of where work may not go (and which nodes take trial work only)."""

    excluded: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    dead: frozenset[str] = frozenset()
    half_open: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exclusions:
        """From the manager actor's ``excluded_nodes()`` answer."""
        return cls(
            excluded=frozenset(data.get("excluded", ())),
            failed=frozenset(data.get("failed", ())),
            dead=frozenset(data.get("dead", ())),
            half_open=tuple(sorted(data.get("half_open", {}).items())),
        )


class ManagerClient(Protocol):
    """What the executor needs from the manager."""

    def poll(self) -> Exclusions | None:
        """A newer snapshot when one has arrived, else None; never blocks."""
        ...

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Send failure events (batched by the caller); never blocks for long."""
        ...

    def acquire_trial(self, node_id: str) -> bool:
        """Take a trial slot on a HALF_OPEN node."""
        ...

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Tell the outcome of a trial."""
        ...


class LocalManagerClient:
    """An in-process FaultToleranceManager (no actor): breakers local to one executor."""

    def __init__(self, manager: FaultToleranceManager) -> None:
        self.manager = manager
        self._last: Exclusions | None = None

    def poll(self) -> Exclusions | None:
        """Recompute the snapshot; None when nothing changed."""
        m = self.manager
        workers = m.workers
        snap = Exclusions(
            excluded=frozenset(m.excluded_workers()),
            failed=frozenset(w for w, i in workers.items() if i.status == WorkerStatus.FAILED),
            dead=frozenset(w for w, i in workers.items() if i.status == WorkerStatus.DEAD),
            half_open=tuple(sorted(m.half_open_workers().items())),
        )
        if snap == self._last:
            return None
        self._last = snap
        return snap

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Charge node faults to the local breakers."""
        for event in events:
            self.manager.report_failure(event)

    def acquire_trial(self, node_id: str) -> bool:
        """Take a trial slot from the local breaker."""
        return self.manager.breaker(node_id).allow_request()

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Close or reopen the local breaker."""
        if success:
            self.manager.record_worker_success(node_id)
        elif failure is not None and failure.failure_type.is_system:
            self.manager.handle_worker_failure(node_id, failure.failure_type, failure.details)
        else:
            self.manager.breaker(node_id).release_trial()


class ActorManagerClient:
    """The detached manager actor; snapshots are fetched asynchronously every ``refresh_s``."""

    def __init__(
        self,
        handle: Any,
        *,
        refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handle = handle
        self.refresh_s = refresh_s
        self._clock = clock
        self._inflight: Any = None
        self._asked_at = -float("inf")
        self._unsent: list[FailureEvent] = []

    def poll(self) -> Exclusions | None:
        """Collect a finished snapshot request; start the next one when due."""
        result = None
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if ready:
                try:
                    result = Exclusions.from_dict(ray.get(ready[0]))
                except Exception as exc:  # restarting actor: keep the last snapshot
                    log.debug("manager snapshot failed: %s", exc)
                self._inflight = None
        now = self._clock()
        if self._inflight is None and now - self._asked_at >= self.refresh_s:
            self._inflight = self.handle.excluded_nodes.remote()
            self._asked_at = now
        return result

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Fire and forget; the actor retries the call across its own restarts."""
        batch = [*self._unsent, *events]
        self._unsent = []
        if not batch:
            return
        try:
            self.handle.report_failures.remote(batch)
        except Exception as exc:
            log.warning("could not report %d failures to the manager: %s", len(batch), exc)
            self._unsent = batch[-10_000:]
        self._asked_at = -float("inf")  # a failure may change exclusions: refresh soon

    def acquire_trial(self, node_id: str) -> bool:
        """A short synchronous call; only made when a node is HALF_OPEN."""
        try:
            return bool(ray.get(self.handle.acquire_trial.remote(node_id), timeout=10))
        except Exception as exc:
            log.debug("acquire_trial(%s) failed: %s", node_id, exc)
            return False

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Fire and forget."""
        self.handle.report_trial.remote(node_id, success, failure)
        self._asked_at = -float("inf")
