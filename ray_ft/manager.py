"""FaultToleranceManager: the pure bookkeeping of failures, breakers and nodes.

No Ray here: the detached manager actor wraps one of these, the executor caches what it
says. A worker is a Ray node (its node id): processes come and go, nodes fail and recover.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ray_ft.breaker import BreakerState, CircuitBreaker
from ray_ft.config import FTConfig
from ray_ft.failures import FailureEvent, FailureType
from ray_ft.optim.base import BaseOptimizer
from ray_ft.optim.individual import Individual
from ray_ft.policy import RetryDecision, RetryPolicy

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "FaultToleranceManager",
    "Task",
    "WorkerInfo",
    "WorkerStatus",
]

NODE_FAULTS = frozenset(
    {
        FailureType.WORKER_CRASH,
        FailureType.NODE_DIED,
        FailureType.NETWORK_ERROR,
        FailureType.OUT_OF_MEMORY,
    }
)
CHECKPOINT_FORMAT_VERSION = 1
STATE_FORMAT_VERSION = 1
_HISTORY_LIMIT = 1000


class WorkerStatus:
    """String constants for WorkerInfo.status."""

    ALIVE = "alive"
    FAILED = "failed"  # probes missed or an unhealthy report: may come back
    DEAD = "dead"  # Ray says the node is gone


@dataclasses.dataclass(slots=True)
class Task:
    """A unit of work as the manager sees it: an id, a name, failures so far, its node."""

    task_id: str
    name: str | None = None
    attempts: int = 0
    worker_id: str | None = None


@dataclasses.dataclass(slots=True)
class WorkerInfo:
    """A node that can run tasks: status, capacity (slots) and current load."""

    worker_id: str
    status: str = WorkerStatus.ALIVE
    capacity: int = 1
    load: int = 0

    @property
    def free(self) -> int:
        """Slots not in use."""
        return max(0, self.capacity - self.load)


class FaultToleranceManager:
    """Counts failures, decides retries, trips per-node breakers, plans reassignment."""

    def __init__(
        self,
        config: FTConfig | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = FTConfig.coerce(config)
        self.policy = RetryPolicy(self.config)
        self._clock = clock
        self._wall_clock = wall_clock
        self.workers: dict[str, WorkerInfo] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.worker_failures: dict[str, collections.deque[FailureEvent]] = {}
        self.failed_tasks: dict[str, Task] = {}
        self.history: collections.deque[FailureEvent] = collections.deque(maxlen=_HISTORY_LIMIT)
        self.failure_counts: collections.Counter[str] = collections.Counter()
        self.health_reasons: dict[str, list[str]] = {}
        self.breaker_transitions: list[dict[str, Any]] = []

    # -- tasks -------------------------------------------------------------------------

    def handle_task_failure(
        self, task: Task, failure_type: FailureType, error: BaseException | None = None
    ) -> RetryDecision:
        """Count one failure of ``task`` and return the policy's decision; never sleeps."""
        failure_type = FailureType.parse(failure_type)
        task.attempts += 1
        self._record(
            FailureEvent(
                timestamp=self._wall_clock(),
                failure_type=failure_type,
                details=None if error is None else f"{type(error).__name__}: {error}"[:500],
                task_id=task.task_id,
                worker_id=task.worker_id,
                attempt=task.attempts,
            )
        )
        decision = self.policy.decide(task.attempts, failure_type, error)
        if not decision:
            self.failed_tasks[task.task_id] = task
        return decision

    # -- workers -----------------------------------------------------------------------

    def register_worker(self, worker_id: str, capacity: int = 1) -> WorkerInfo:
        """Add (or refresh) a node; a node that Ray reports alive again is ALIVE again."""
        info = self.workers.get(worker_id)
        if info is None:
            info = self.workers[worker_id] = WorkerInfo(worker_id, capacity=capacity)
        else:
            info.capacity = capacity
            if info.status == WorkerStatus.DEAD:
                info.status = WorkerStatus.ALIVE
        return info

    def breaker(self, worker_id: str) -> CircuitBreaker:
        """The breaker of one node, created CLOSED on first use."""
        breaker = self.breakers.get(worker_id)
        if breaker is None:
            breaker = CircuitBreaker(
                self.config.breaker_timeout,
                half_open_max_calls=self.config.half_open_max_calls,
                clock=self._clock,
                name=worker_id,
            )
            breaker.add_listener(self._on_transition)
            self.breakers[worker_id] = breaker
        return breaker

    def handle_worker_failure(
        self,
        worker_id: str,
        failure_type: FailureType = FailureType.WORKER_CRASH,
        details: str | None = None,
    ) -> FailureEvent:
        """Record a failure on a node; more than the threshold in the window opens its breaker."""
        failure_type = FailureType.parse(failure_type)
        event = FailureEvent(
            timestamp=self._wall_clock(),
            failure_type=failure_type,
            details=details,
            worker_id=worker_id,
        )
        self._record(event)
        now = self._clock()
        window = self.worker_failures.setdefault(worker_id, collections.deque())
        window.append(dataclasses.replace(event, timestamp=now))
        while window and now - window[0].timestamp > self.config.failure_window:
            window.popleft()
        # A task's NODE_DIED is evidence, not a verdict: only Ray's node table (through
        # mark_worker_dead) or the probes (mark_worker_failed) change a node's status.
        breaker = self.breaker(worker_id)
        if breaker.state is BreakerState.HALF_OPEN:
            breaker.record_failure()
        elif len(window) > self.config.worker_failure_threshold and not breaker.is_open():
            breaker.open()
        return event

    def record_worker_success(self, worker_id: str) -> None:
        """A task finished on this node: a HALF_OPEN trial success closes its breaker."""
        breaker = self.breakers.get(worker_id)
        if breaker is not None and breaker.state is BreakerState.HALF_OPEN:
            breaker.record_success()
            self.worker_failures.pop(worker_id, None)

    def acquire_trial(self, worker_id: str) -> bool:
        """Take one trial slot of an alive HALF_OPEN node; False otherwise."""
        info = self.workers.get(worker_id)
        if info is not None and info.status != WorkerStatus.ALIVE:
            return False
        breaker = self.breaker(worker_id)
        return breaker.state is BreakerState.HALF_OPEN and breaker.allow_request()

    def record_trial(
        self, worker_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """A trial's outcome: success closes the breaker, a system failure reopens it,
        anything else (an application error, a cancel) just gives the slot back."""
        if success:
            self.record_worker_success(worker_id)
        elif failure is not None and failure.failure_type.is_system:
            self.handle_worker_failure(worker_id, failure.failure_type, failure.details)
        else:
            self.breaker(worker_id).release_trial()

    def mark_worker_failed(self, worker_id: str, reasons: Iterable[str]) -> None:
        """Probes missed or the node reported unhealthy: exclude it and open its breaker."""
        info = self.workers.get(worker_id) or self.register_worker(worker_id)
        if info.status != WorkerStatus.DEAD:
            info.status = WorkerStatus.FAILED
        self.health_reasons[worker_id] = list(reasons)
        breaker = self.breaker(worker_id)
        if not breaker.is_open():
            breaker.open()

    def mark_worker_healthy(self, worker_id: str) -> None:
        """A healthy probe answer: the node is ALIVE; its breaker still recovers by trial."""
        info = self.workers.get(worker_id)
        if info is not None and info.status == WorkerStatus.FAILED:
            info.status = WorkerStatus.ALIVE
        self.health_reasons.pop(worker_id, None)

    def mark_worker_dead(self, worker_id: str) -> None:
        """Ray reports the node dead: never schedule there again unless it rejoins."""
        info = self.workers.get(worker_id) or self.register_worker(worker_id)
        info.status = WorkerStatus.DEAD

    def excluded_workers(self) -> set[str]:
        """Nodes that must receive no task: dead, failed, or with an OPEN breaker."""
        excluded = {w for w, info in self.workers.items() if info.status != WorkerStatus.ALIVE}
        excluded.update(w for w, b in self.breakers.items() if b.is_open())
        return excluded

    def half_open_workers(self) -> dict[str, int]:
        """HALF_OPEN nodes and the trial calls each still admits."""
        result = {}
        for worker_id, breaker in self.breakers.items():
            if breaker.state is BreakerState.HALF_OPEN and worker_id not in self._not_alive():
                result[worker_id] = breaker.trials_available()
        return result

    def reassign_tasks(
        self,
        failed_worker_id: str | None,
        task_ids: Iterable[str],
        available_workers: Iterable[WorkerInfo | str],
    ) -> dict[str, str]:
        """Plan where tasks go: most free capacity first, never to a failed/dead/OPEN node.

        HALF_OPEN nodes take at most their remaining trial allowance. Tasks that fit
        nowhere are left out of the mapping (they stay queued). The plan does not change
        any load; the caller dispatches and counts.
        """
        not_alive = self._not_alive()
        free: dict[str, int] = {}
        for candidate in available_workers:
            info = (
                candidate
                if isinstance(candidate, WorkerInfo)
                else self.workers.get(candidate, WorkerInfo(candidate))
            )
            worker_id = info.worker_id
            if (
                worker_id == failed_worker_id
                or info.status != WorkerStatus.ALIVE
                or worker_id in not_alive
            ):
                continue
            slots = info.free
            breaker = self.breakers.get(worker_id)
            if breaker is not None:
                state = breaker.state
                if state is BreakerState.OPEN:
                    continue
                if state is BreakerState.HALF_OPEN:
                    slots = min(slots, breaker.trials_available())
            if slots > 0:
                free[worker_id] = free.get(worker_id, 0) + slots
        tasks = list(task_ids)
        counts = _water_fill(free, len(tasks))
        order = [w for w, n in counts for _ in range(n)]
        return dict(zip(tasks, order))

    # -- checkpoints -------------------------------------------------------------------

    def recover_from_checkpoint(
        self, checkpoint: Mapping[str, Any], optimizer: BaseOptimizer
    ) -> int:
        """Restore optimizer state and population; return the generation to resume from."""
        missing = [
            k for k in ("generation", "optimizer_state", "population") if k not in checkpoint
        ]
        if missing:
            msg = (
                f"checkpoint lacks {', '.join(missing)}; pass a dict saved by optimize() "
                "(generation, optimizer_state, population)"
            )
            raise ValueError(msg)
        version = checkpoint.get("format_version", CHECKPOINT_FORMAT_VERSION)
        if version > CHECKPOINT_FORMAT_VERSION:
            msg = (
                f"checkpoint format_version={version} is newer than this ray_ft understands "
                f"({CHECKPOINT_FORMAT_VERSION}); upgrade ray_ft to load it"
            )
            raise ValueError(msg)
        optimizer.load_state(checkpoint["optimizer_state"])
        optimizer.population = [Individual.from_dict(d) for d in checkpoint["population"]]
        return int(checkpoint["generation"])

    # -- state -------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-serializable snapshot of everything that must survive a restart."""
        now = self._clock()
        return {
            "format_version": STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "workers": {w: dataclasses.asdict(i) for w, i in self.workers.items()},
            "breakers": {w: b.get_state() for w, b in self.breakers.items()},
            "worker_failures": {
                w: [dataclasses.replace(e, timestamp=now - e.timestamp).to_dict() for e in events]
                for w, events in self.worker_failures.items()
            },
            "failed_tasks": {t: dataclasses.asdict(task) for t, task in self.failed_tasks.items()},
            "history": [e.to_dict() for e in self.history],
            "failure_counts": dict(self.failure_counts),
            "health_reasons": dict(self.health_reasons),
            "breaker_transitions": list(self.breaker_transitions),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (ages in the failure window are kept)."""
        if state.get("format_version", STATE_FORMAT_VERSION) != STATE_FORMAT_VERSION:
            msg = f"manager state format_version={state.get('format_version')!r} is not supported"
            raise ValueError(msg)
        now = self._clock()
        self.workers = {w: WorkerInfo(**i) for w, i in state.get("workers", {}).items()}
        self.breakers = {}
        for worker_id, breaker_state in state.get("breakers", {}).items():
            self.breaker(worker_id).load_state(breaker_state)
        self.worker_failures = {
            w: collections.deque(
                dataclasses.replace(FailureEvent.from_dict(e), timestamp=now - e["timestamp"])
                for e in events
            )
            for w, events in state.get("worker_failures", {}).items()
        }
        self.failed_tasks = {t: Task(**d) for t, d in state.get("failed_tasks", {}).items()}
        self.history = collections.deque(
            (FailureEvent.from_dict(e) for e in state.get("history", [])), maxlen=_HISTORY_LIMIT
        )
        self.failure_counts = collections.Counter(state.get("failure_counts", {}))
        self.health_reasons = {w: list(r) for w, r in state.get("health_reasons", {}).items()}
        self.breaker_transitions = list(state.get("breaker_transitions", []))

    def record_event(self, event: FailureEvent) -> None:
        """Keep a failure in the history and counters without charging any node."""
        self._record(event)

    def report_failure(self, event: FailureEvent) -> None:
        """Route an attempt's failure: node faults count toward its breaker, others are kept.

        Timeouts and application errors say more about the task than about the node, so
        they never open a breaker (a task that hangs everywhere must not empty the cluster).
        """
        if event.worker_id is not None and event.failure_type in NODE_FAULTS:
            self.handle_worker_failure(event.worker_id, event.failure_type, event.details)
        else:
            self.record_event(event)

    # -- internals ---------------------------------------------------------------------

    def _record(self, event: FailureEvent) -> None:
        self.history.append(event)
        self.failure_counts[event.failure_type.value] += 1

    def _not_alive(self) -> set[str]:
        return {w for w, info in self.workers.items() if info.status != WorkerStatus.ALIVE}

    def _on_transition(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        self.breaker_transitions.append(
            {
                "worker_id": breaker.name,
                "from": old.value,
                "to": new.value,
                "at": self._wall_clock(),
            }
        )
        del self.breaker_transitions[:-_HISTORY_LIMIT]


def _water_fill(free: Mapping[str, int], n_tasks: int) -> list[tuple[str, int]]:
    """Split ``n_tasks`` so that the free capacity left is as even as possible.

    Finds the level L such that giving each worker max(0, free - L) tasks uses at most
    n_tasks, then hands the remainder one each to the fullest workers at the level.
    O(W log W), independent of the number of tasks.
    """
    if n_tasks <= 0 or not free:
        return []
    total = sum(free.values())
    if n_tasks >= total:
        return sorted(free.items())
    caps = sorted(free.values())
    prefix = [0]
    for c in caps:
        prefix.append(prefix[-1] + c)

    def assigned(level: int) -> int:
        i = bisect.bisect_right(caps, level)
        return (prefix[-1] - prefix[i]) - level * (len(caps) - i)

    low, high = 0, caps[-1]
    while low < high:  # smallest level with assigned(level) <= n_tasks
        mid = (low + high) // 2
        if assigned(mid) <= n_tasks:
            high = mid
        else:
            low = mid + 1
    level = low
    counts = {w: max(0, f - level) for w, f in free.items()}
    remainder = n_tasks - sum(counts.values())
    if remainder:
        at_level = sorted(
            (w for w, f in free.items() if f >= level and level > 0),
            key=lambda w: (-free[w], w),
        )
        for worker_id in at_level[:remainder]:
            counts[worker_id] += 1
    return sorted((w, c) for w, c in counts.items() if c > 0)
