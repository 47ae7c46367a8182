"""FaultToleranceManager: the pure bookkeeping of failures, breakers and nodes.

No Ray here: the detached manager actor wraps one of these, the executor caches what it
says. A worker is a Ray node (its node id): processes come and go, nodes fail and recover.
The seed's attributes keep the seed's types (``task_retries``, ``failed_tasks``,
``worker_failures``, ``circuit_breakers``); a node's status combines its liveness (the
heartbeat detector) and its health verdict (ok, degraded, fatal).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ray_ft.config import FTConfig
from ray_ft.core.attribution import SUSPECT_FAILURES, Blame
from ray_ft.core.retry import RetryDecision, RetryPolicy
from ray_ft.failures import FailureEvent, FailureType, Severity
from ray_ft.manager import persist
from ray_ft.manager.breaker import BreakerState, CircuitBreaker
from ray_ft.manager.crowd import DegradedCrowd, ObserverGuard, PeerCounts
from ray_ft.manager.records import (
    HISTORY_LIMIT,
    NODE_FAULTS,
    TAKES_WORK,
    Task,
    WorkerInfo,
    WorkerStatus,
    charges_node,
)
from ray_ft.manager.snapshots import SnapshotCache
from ray_ft.manager.water_fill import plan_reassignment

if TYPE_CHECKING:
    from ray_ft.optim.base import BaseOptimizer

__all__ = [
    "FaultToleranceManager",
    "Task",
    "WorkerInfo",
    "WorkerStatus",
]


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
        self.policy = RetryPolicy(self.config)  #: the seed's retry decisions
        self._clock = clock  # breakers, tombstones, trial leases
        self._wall_clock = wall_clock  # failure events and transitions (shown as wall times)
        # the seed's attributes, with the seed's types
        self.workers: dict[str, WorkerInfo] = {}  #: every node Ray has reported, by node id
        self.circuit_breakers: dict[str, CircuitBreaker] = {}  #: one per node, on first use
        self.task_retries: dict[str, int] = {}  #: task id -> failures counted
        self.failed_tasks: list[Task] = []  #: tasks that ran out of retries (the last 1,000)
        #: node -> its node-blamed failures within ``failure_window``
        self.worker_failures: dict[str, list[FailureEvent]] = {}
        # beyond the seed
        #: every failure on record, blamed or not (the last 1,000)
        self.history: collections.deque[FailureEvent] = collections.deque(maxlen=HISTORY_LIMIT)
        self.failure_counts: collections.Counter[str] = collections.Counter()  #: by type
        self.health_reasons: dict[str, list[str]] = {}  #: node -> its probe's findings
        self.health_severity: dict[str, Severity] = {}  #: node -> degraded or fatal (ok: absent)
        self.liveness_failures: dict[str, str] = {}  #: node -> why it looks failed
        self.breaker_transitions: list[dict[str, Any]] = []  #: the last 1,000
        self._trial_leases: dict[str, list[float]] = {}  # node -> when each trial was leased
        self._observer = ObserverGuard()  # most nodes look failed at once: suspect us
        self._crowd = DegradedCrowd()  # the degraded nodes, and what most share at once
        #: bumped by every change executors must see; a poll costs O(1), not O(nodes)
        self.version = 0
        self._snapshots = SnapshotCache()  # the exclusions, rebuilt only when they changed
        self._dead_since: dict[str, float] = {}  # node Ray reported gone -> since when
        self._peers = PeerCounts()  # failures in the window per node, kept sorted

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Alias of :attr:`circuit_breakers`."""
        return self.circuit_breakers

    @property
    def observer_suspect(self) -> bool:
        """Most nodes look failed at once: liveness exclusions are held back."""
        return self._observer.suspect

    @property
    def degraded(self) -> set[str]:
        """Nodes whose status is DEGRADED (kept per event)."""
        return self._crowd.nodes

    @property
    def mass_degraded(self) -> str | None:
        """What most nodes share while most are degraded at once ("disk above 95% on 3 of 3
        nodes"), else None: said once at WARNING, shown by ``ray-ft status``."""
        return self._crowd.shared

    # -- tasks -------------------------------------------------------------------------

    def handle_task_failure(
        self, task: Task, failure_type: FailureType, error: BaseException | None = None
    ) -> RetryDecision:
        """Count one failure of ``task`` (by its id) and return the policy's decision.

        Failures are counted in ``task_retries`` by task id, so a fresh Task object for the
        same id still runs out of retries. Never sleeps: the caller schedules the delay.
        """
        failure_type = FailureType.parse(failure_type)
        count = self.task_retries.get(task.task_id, 0) + 1
        self.task_retries[task.task_id] = count
        task.attempts = count
        self._record(
            FailureEvent(
                timestamp=self._wall_clock(),
                failure_type=failure_type,
                details=None if error is None else f"{type(error).__name__}: {error}"[:500],
                task_id=task.task_id,
                worker_id=task.worker_id,
                attempt=count,
            )
        )
        decision = self.policy.decide(count, failure_type, error)
        if not decision:
            self.failed_tasks.append(task)
            del self.failed_tasks[:-HISTORY_LIMIT]
        return decision

    def forget_task(self, task_id: str) -> None:
        """Drop a finished task's retry count (an executor calls this to stay bounded)."""
        self.task_retries.pop(task_id, None)

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
                self._dead_since.pop(worker_id, None)
                if worker_id in self.worker_failures:
                    self._peers.set(worker_id, len(self.worker_failures[worker_id]))
                self.version += 1
                self._settle(worker_id)
        return info

    def breaker(self, worker_id: str) -> CircuitBreaker:
        """The breaker of one node, created CLOSED on first use."""
        breaker = self.circuit_breakers.get(worker_id)
        if breaker is None:
            breaker = CircuitBreaker(
                self.config.breaker_timeout,
                half_open_max_calls=self.config.half_open_max_calls,
                clock=self._clock,
                name=worker_id,
            )
            breaker.add_listener(self._on_transition)
            self.circuit_breakers[worker_id] = breaker
        return breaker

    def handle_worker_failure(
        self,
        worker_id: str,
        failure_type: FailureType = FailureType.WORKER_CRASH,
        details: str | None = None,
    ) -> FailureEvent:
        """Record a failure on a node; more than the threshold in the window opens its breaker."""
        event = FailureEvent(
            timestamp=self._wall_clock(),
            failure_type=FailureType.parse(failure_type),
            details=details,
            worker_id=worker_id,
            blame=Blame.NODE.value,
        )
        self._charge(event, outlier_only=False)
        return event

    def record_worker_success(self, worker_id: str) -> None:
        """A task finished on this node: a HALF_OPEN trial success closes its breaker."""
        breaker = self.circuit_breakers.get(worker_id)
        if breaker is not None and breaker.state is BreakerState.HALF_OPEN:
            breaker.record_success()
            self.worker_failures.pop(worker_id, None)
            self._peers.set(worker_id, None)

    def acquire_trial(self, worker_id: str) -> bool:
        """Take one trial slot of an alive HALF_OPEN node; False otherwise."""
        info = self.workers.get(worker_id)
        if info is not None and info.status != WorkerStatus.ALIVE:
            return False
        breaker = self.breaker(worker_id)
        granted = breaker.state is BreakerState.HALF_OPEN and breaker.allow_request()
        if granted:
            self._trial_leases.setdefault(worker_id, []).append(self._clock())
            self.version += 1
        return granted

    def expire_trial_leases(self, timeout: float | None = None) -> list[str]:
        """Take back trial leases held longer than ``timeout`` (default ``breaker_timeout``):
        a driver that died holding one must not keep the node out of use for good."""
        limit = self.config.breaker_timeout if timeout is None else timeout
        now = self._clock()
        expired = []
        for worker_id, leases in self._trial_leases.items():
            while leases and now - leases[0] >= limit:
                leases.pop(0)
                self.breaker(worker_id).release_trial()
                expired.append(worker_id)
                self.version += 1
        return expired

    def record_trial(
        self, worker_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """A trial's outcome: success closes the breaker, a node fault reopens it,
        anything else (the task's own failure, a cancel) just gives the slot back."""
        leases = self._trial_leases.get(worker_id)
        if leases:
            leases.pop(0)
        self.version += 1
        if success:
            self.record_worker_success(worker_id)
        elif failure is not None and charges_node(failure):
            self._record(failure)
            self.breaker(worker_id).record_failure()
        else:
            self.breaker(worker_id).release_trial()

    def mark_worker_failed(self, worker_id: str, reasons: Iterable[str]) -> None:
        """A fatal health verdict: exclude the node, rerun its work, open its breaker."""
        self.update_health(worker_id, Severity.FATAL, list(reasons))

    def mark_worker_healthy(self, worker_id: str) -> None:
        """A healthy report and heartbeats: the node is ALIVE (its breaker recovers by trial)."""
        self.liveness_failures.pop(worker_id, None)
        self.update_health(worker_id, Severity.OK, [])

    def update_health(self, worker_id: str, severity: Severity | str, reasons: list[str]) -> None:
        """Take a health verdict: ``fatal`` fails the node, ``degraded`` pauses new work."""
        severity = Severity(severity)  # a probe's answer carries the plain string
        self.workers.get(worker_id) or self.register_worker(worker_id)
        if severity == Severity.OK:
            self.health_severity.pop(worker_id, None)
            self.health_reasons.pop(worker_id, None)
        else:
            self.health_severity[worker_id] = severity
            self.health_reasons[worker_id] = list(reasons)
        self._settle(worker_id)

    def update_liveness(self, worker_id: str, alive: bool, reason: str | None = None) -> bool:
        """Take the heartbeat detector's verdict: a node that stopped answering fails.

        Kubernetes' rule: when a majority of the nodes (and at least three) would look
        failed at once, the observer (this manager, its node, its network) is the likelier
        fault, so no more nodes are excluded until fewer look failed. Returns False when
        the verdict was held back so.
        """
        self.workers.get(worker_id) or self.register_worker(worker_id)
        if alive:
            self.liveness_failures.pop(worker_id, None)
        elif worker_id not in self.liveness_failures:
            if self._observer_suspect(extra=1):
                return False
            self.liveness_failures[worker_id] = reason or "stopped answering heartbeats"
        self._settle(worker_id)
        self._observer_suspect(extra=0)  # clears the suspicion once few enough look failed
        return True

    def failed_by_liveness(self, worker_id: str) -> bool:
        """The node stands failed because it stopped answering heartbeats."""
        return worker_id in self.liveness_failures

    def forget_liveness(self, worker_id: str) -> None:
        """The node left (its probe's history is dropped): its heartbeat verdict goes too."""
        if self.liveness_failures.pop(worker_id, None) is not None:
            self.version += 1

    def _observer_suspect(self, extra: int) -> bool:
        """True while a majority of the live nodes, at least three, would look failed with
        ``extra`` more (``ray_ft.manager.crowd.ObserverGuard``)."""
        # O(nodes failing), not O(nodes): the dead are exactly those in _dead_since
        live = len(self.workers) - len(self._dead_since)
        failing = sum(1 for w in self.liveness_failures if w not in self._dead_since)
        return self._observer.check(failing, live, extra=extra)

    def mark_worker_dead(self, worker_id: str) -> None:
        """Ray reports the node dead: never schedule there again unless it rejoins."""
        info = self.workers.get(worker_id) or self.register_worker(worker_id)
        if info.status != WorkerStatus.DEAD:
            info.status = WorkerStatus.DEAD
            self._dead_since[worker_id] = self._clock()
            self._peers.set(worker_id, None)  # a dead node is nobody's peer
            self.version += 1
            self._note_degraded(worker_id, info)

    def prune_departed(self, after: float) -> list[str]:
        """Forget nodes Ray has reported gone for ``after`` seconds: every per-node table
        shrinks to the live cluster. (A later report about one is refused by the actor: it
        names a node Ray no longer lists alive.)"""
        now = self._clock()
        gone = [w for w, since in self._dead_since.items() if now - since >= after]
        for worker_id in gone:
            del self._dead_since[worker_id]
            self.workers.pop(worker_id, None)
            self.circuit_breakers.pop(worker_id, None)
            self.worker_failures.pop(worker_id, None)
            self._peers.set(worker_id, None)
            self.health_reasons.pop(worker_id, None)
            self.health_severity.pop(worker_id, None)
            self.liveness_failures.pop(worker_id, None)
            self._trial_leases.pop(worker_id, None)
            self._crowd.nodes.discard(worker_id)
        if gone:
            self.version += 1
        return gone

    def node_reasons(self, worker_id: str) -> list[str]:
        """Why a node is not ALIVE: its liveness failure first, then its health reasons."""
        reasons = []
        if worker_id in self.liveness_failures:
            reasons.append(self.liveness_failures[worker_id])
        return reasons + self.health_reasons.get(worker_id, [])

    def transitions_by_node(self, last: int) -> dict[str, list[dict[str, Any]]]:
        """Each node's last ``last`` breaker transitions, oldest first: one pass over the
        bounded history (``HISTORY_LIMIT``), not one per node."""
        out: dict[str, list[dict[str, Any]]] = {}
        for transition in self.breaker_transitions:
            out.setdefault(str(transition["worker_id"]), []).append(transition)
        return {node: moves[-last:] for node, moves in out.items()}

    def excluded_workers(self) -> set[str]:
        """Nodes that must receive no new task: dead, failed, or OPEN breaker. A degraded
        node is not excluded: it is placed last (``degraded`` in the snapshot)."""
        excluded = {w for w, info in self.workers.items() if info.status not in TAKES_WORK}
        excluded.update(w for w, b in self.circuit_breakers.items() if b.is_open())
        return excluded

    def half_open_workers(self) -> dict[str, int]:
        """HALF_OPEN nodes and the trial calls each still admits."""
        result = {}
        for worker_id, breaker in self.circuit_breakers.items():
            info = self.workers.get(worker_id)
            taking = info is not None and info.status in TAKES_WORK
            if breaker.state is BreakerState.HALF_OPEN and taking:
                result[worker_id] = breaker.trials_available()
        return result

    def exclusions_snapshot(self) -> dict[str, Any]:
        """What executors must respect, as plain data (the actor and local client share it).

        ``failed`` and ``dead`` nodes have their running attempts rerun elsewhere;
        ``degraded`` nodes are placed last; ``half_open`` nodes take trials only.
        Rebuilt only when something changed (or an OPEN breaker is due to turn HALF_OPEN);
        ``token`` names this version, so an executor that has it needs nothing sent.
        """
        cached = self._snapshots.current(self.version, self._clock())
        if cached is not None:
            return cached
        by_status: dict[str, list[str]] = collections.defaultdict(list)
        for worker_id, info in self.workers.items():
            by_status[info.status].append(worker_id)
        excluded = sorted(self.excluded_workers())  # may turn due breakers HALF_OPEN
        lists = {
            "excluded": excluded,
            "failed": sorted(by_status[WorkerStatus.FAILED]),
            "dead": sorted(by_status[WorkerStatus.DEAD]),
            "degraded": sorted(by_status[WorkerStatus.DEGRADED]),
            "half_open": self.half_open_workers(),
        }
        due = min((b.reopens_at() for b in self.circuit_breakers.values()), default=math.inf)
        return self._snapshots.store(self.version, due, lists)

    def exclusions_since(self, token: str | None) -> dict[str, Any] | None:
        """What an executor holding snapshot ``token`` needs: None when it is current, else
        only what changed since (``ray_ft.manager.snapshots``), or the whole snapshot."""
        return self._snapshots.log.since(token, self.exclusions_snapshot())

    def reassign_tasks(
        self,
        failed_worker_id: str | None,
        task_ids: Iterable[str],
        available_workers: Iterable[WorkerInfo | str],
    ) -> dict[str, str]:
        """Plan where tasks go: never to the failed node, a failed/dead one or an OPEN breaker.

        Free capacity is filled evenly first; tasks beyond it are spread over the eligible
        workers by load, so no task is dropped while any eligible worker exists. HALF_OPEN
        nodes take at most their remaining trial allowance. The plan changes no load; the
        caller dispatches and counts.
        """
        return plan_reassignment(
            failed_worker_id, task_ids, available_workers, self.workers, self.circuit_breakers
        )

    # -- checkpoints -------------------------------------------------------------------

    def recover_from_checkpoint(
        self, checkpoint: Mapping[str, Any], optimizer: BaseOptimizer
    ) -> int:
        """Restore optimizer state and population; return the generation to resume from.

        The seed's method; the format lives in :mod:`ray_ft.optim.checkpoint`.
        """
        from ray_ft.optim.checkpoint import restore_checkpoint

        return restore_checkpoint(checkpoint, optimizer)

    # -- state -------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-serializable snapshot of everything that must survive a restart
        (the format: ``ray_ft.manager.persist``)."""
        return persist.encode(self)

    def update_config(self, config: FTConfig) -> None:
        """Adopt new settings in place: breakers, records and verdicts stay (each breaker
        takes the new timeout and trial count)."""
        self.config = config
        self.policy = RetryPolicy(config)
        for breaker in self.circuit_breakers.values():
            breaker.reconfigure(config.breaker_timeout, config.half_open_max_calls)
        self.version += 1  # snapshots carry what the settings decide: void them

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (failure events keep their wall times)."""
        fields = persist.decode(state)
        breakers = fields.pop("breakers")
        for name, value in fields.items():
            setattr(self, name, value)
        self.circuit_breakers = {}
        for worker_id, breaker_state in breakers.items():
            self.breaker(worker_id).load_state(breaker_state)
        self.version += 1  # every cached snapshot is void
        now = self._clock()  # dead nodes restored: their tombstone window starts again
        self._dead_since = {
            w: now for w, info in self.workers.items() if info.status == WorkerStatus.DEAD
        }
        self._peers.clear()
        for worker_id, events in self.worker_failures.items():
            if self.workers.get(worker_id, WorkerInfo(worker_id)).status != WorkerStatus.DEAD:
                self._peers.set(worker_id, len(events))

    def record_event(self, event: FailureEvent) -> None:
        """Keep a failure in the history and counters without charging any node."""
        self._record(event)

    def report_failure(self, event: FailureEvent) -> None:
        """Route an attempt's failure by its blame (see :mod:`ray_ft.core.attribution`).

        Only events blamed on the node count toward its breaker; crash evidence (a crash,
        an OOM kill, a timeout) opens it only when the node stands out from the others, so
        crashes spread evenly over every node (a flaky objective) exclude nothing. An event
        without blame is judged by its type: Ray's node and network failures are the node's.
        """
        blame = event.blame
        if blame is None:
            blame = (Blame.NODE if event.failure_type in NODE_FAULTS else Blame.TASK).value
            event = dataclasses.replace(event, blame=blame)
        if event.worker_id is not None and blame == Blame.NODE.value:
            # crash evidence and the user's own failures (charged to a node only when its
            # rate stood out) open a breaker only while the node stands out here too
            outlier_only = (
                event.failure_type in SUSPECT_FAILURES
                or event.failure_type is FailureType.APPLICATION_ERROR
            )
            self._charge(event, outlier_only=outlier_only)
        else:
            self._record(event)

    # -- internals ---------------------------------------------------------------------

    def _charge(self, event: FailureEvent, *, outlier_only: bool) -> None:
        """Count a node fault in the window; open the breaker past the threshold."""
        worker_id = event.worker_id
        assert worker_id is not None
        self._record(event)
        now = self._wall_clock()
        window = self._window(worker_id, now)
        window.append(event)
        if self.workers.get(worker_id, WorkerInfo(worker_id)).status != WorkerStatus.DEAD:
            self._peers.set(worker_id, len(window))
        breaker = self.breaker(worker_id)
        if breaker.state is BreakerState.HALF_OPEN:
            breaker.record_failure()
            return
        if len(window) <= self.config.worker_failure_threshold or breaker.is_open():
            return
        if outlier_only and not self._stands_out(worker_id, now):
            return
        breaker.open()

    def _window(self, worker_id: str, now: float) -> list[FailureEvent]:
        """The node's failures within ``failure_window``, the expired dropped from the front
        (events arrive in time order: amortized O(1) per event)."""
        window = self.worker_failures.setdefault(worker_id, [])
        expired = 0
        while (
            expired < len(window) and now - window[expired].timestamp > self.config.failure_window
        ):
            expired += 1
        if expired:
            del window[:expired]
        return window

    def _stands_out(self, worker_id: str, now: float) -> bool:
        """More than twice the failures of a typical other node in the window."""
        return self._peers.stands_out(worker_id, len(self.worker_failures.get(worker_id, [])))

    def _settle(self, worker_id: str) -> None:
        """Recompute a node's status from its liveness and health; fatal opens the breaker."""
        info = self.workers[worker_id]
        if info.status == WorkerStatus.DEAD:
            return
        before = info.status
        self._settle_status(worker_id, info)
        if info.status != before:
            self.version += 1
            self._note_degraded(worker_id, info)

    def _note_degraded(self, worker_id: str, info: WorkerInfo) -> None:
        """Keep the degraded crowd in step with one node's status."""
        live = len(self.workers) - len(self._dead_since)
        degraded = info.status == WorkerStatus.DEGRADED
        self._crowd.note(worker_id, degraded, live, self.health_reasons)

    def _settle_status(self, worker_id: str, info: WorkerInfo) -> None:
        severity = self.health_severity.get(worker_id)
        if worker_id in self.liveness_failures or severity == Severity.FATAL:
            if info.status != WorkerStatus.FAILED:
                info.status = WorkerStatus.FAILED
                breaker = self.breaker(worker_id)
                if not breaker.is_open():
                    breaker.open()
        elif severity == Severity.DEGRADED:
            info.status = WorkerStatus.DEGRADED
        else:
            info.status = WorkerStatus.ALIVE

    def _record(self, event: FailureEvent) -> None:
        self.history.append(event)
        self.failure_counts[event.failure_type.value] += 1

    def _on_transition(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        self.version += 1
        self.breaker_transitions.append(
            {
                "worker_id": breaker.name,
                "from": old.value,
                "to": new.value,
                "at": self._wall_clock(),
            }
        )
        del self.breaker_transitions[:-HISTORY_LIMIT]
