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
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ray_ft.config import FTConfig
from ray_ft.core.attribution import SUSPECT_FAILURES, Blame
from ray_ft.core.retry import RetryDecision, RetryPolicy
from ray_ft.failures import FailureEvent, FailureType, Severity
from ray_ft.manager import persist
from ray_ft.manager.breaker import BreakerState, CircuitBreaker
from ray_ft.manager.crowd import DegradedCrowd, ObserverGuard
from ray_ft.manager.failure_log import FailureLog
from ray_ft.manager.node_breakers import NodeBreakers
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
from ray_ft.manager.verdicts import NodeVerdicts
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
        #: one breaker per node (``circuit_breakers``), their transitions and trial leases
        self.node_breakers = NodeBreakers(
            self.config.breaker_timeout,
            self.config.half_open_max_calls,
            clock=clock,
            wall_clock=wall_clock,
            on_change=self._changed,
        )
        self.task_retries: dict[str, int] = {}  #: task id -> failures counted
        self.failed_tasks: list[Task] = []  #: tasks that ran out of retries (the last 1,000)
        #: the history, counts by type and each node's window (``worker_failures``)
        self.failures = FailureLog()
        # beyond the seed
        self.verdicts = NodeVerdicts()  #: what the probes last said of each node
        self._observer = ObserverGuard()  # most nodes look failed at once: suspect us
        self._crowd = DegradedCrowd()  # the degraded nodes, and what most share at once
        #: bumped by every change executors must see; a poll costs O(1), not O(nodes)
        self.version = 0
        self._snapshots = SnapshotCache()  # the exclusions, rebuilt only when they changed
        self._dead_since: dict[str, float] = {}  # node Ray reported gone -> since when

    @property
    def circuit_breakers(self) -> dict[str, CircuitBreaker]:
        """Node -> its breaker (the seed's name)."""
        return self.node_breakers.by_node

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Alias of :attr:`circuit_breakers`."""
        return self.node_breakers.by_node

    @property
    def breaker_transitions(self) -> list[dict[str, Any]]:
        """The breakers' transitions, oldest first (the last 1,000)."""
        return self.node_breakers.transitions

    @property
    def worker_failures(self) -> dict[str, list[FailureEvent]]:
        """Node -> its node-blamed failures within ``failure_window`` (the seed's name)."""
        return self.failures.windows

    @property
    def history(self) -> collections.deque[FailureEvent]:
        """Every failure on record, blamed or not (the last 1,000)."""
        return self.failures.history

    @property
    def failure_counts(self) -> collections.Counter[str]:
        """Failures on record by type."""
        return self.failures.counts

    @property
    def health_reasons(self) -> dict[str, list[str]]:
        """Node -> its probe's findings (healthy: absent)."""
        return self.verdicts.reasons

    @property
    def health_severity(self) -> dict[str, Severity]:
        """Node -> degraded or fatal (ok: absent)."""
        return self.verdicts.severity

    @property
    def liveness_failures(self) -> dict[str, str]:
        """Node -> why it looks failed to the heartbeat detector (answering: absent)."""
        return self.verdicts.liveness

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
        self.failures.record(
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
                self.failures.set_peer(worker_id, True)
                self.version += 1
                self._settle(worker_id)
        return info

    def breaker(self, worker_id: str) -> CircuitBreaker:
        """The breaker of one node, created CLOSED on first use."""
        return self.node_breakers.get(worker_id)

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
            self.failures.clear(worker_id)

    def acquire_trial(self, worker_id: str) -> bool:
        """Take one trial slot of an alive HALF_OPEN node; False otherwise."""
        info = self.workers.get(worker_id)
        if info is not None and info.status != WorkerStatus.ALIVE:
            return False
        return self.node_breakers.lease(worker_id)

    def expire_trial_leases(self, timeout: float | None = None) -> list[str]:
        """Take back trial leases held longer than ``timeout`` (default ``breaker_timeout``):
        a driver that died holding one must not keep the node out of use for good."""
        return self.node_breakers.expire(
            self.config.breaker_timeout if timeout is None else timeout
        )

    def record_trial(
        self, worker_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """A trial's outcome: success closes the breaker, a node fault reopens it,
        anything else (the task's own failure, a cancel) just gives the slot back."""
        self.node_breakers.end_lease(worker_id)
        if success:
            self.record_worker_success(worker_id)
        elif failure is not None and charges_node(failure):
            self.failures.record(failure)
            self.breaker(worker_id).record_failure()
        else:
            self.breaker(worker_id).release_trial()

    def mark_worker_failed(self, worker_id: str, reasons: Iterable[str]) -> None:
        """A fatal health verdict: exclude the node, rerun its work, open its breaker."""
        self.update_health(worker_id, Severity.FATAL, list(reasons))

    def mark_worker_healthy(self, worker_id: str) -> None:
        """A healthy report and heartbeats: the node is ALIVE (its breaker recovers by trial)."""
        self.verdicts.set_answering(worker_id)
        self.update_health(worker_id, Severity.OK, [])

    def update_health(self, worker_id: str, severity: Severity | str, reasons: list[str]) -> None:
        """Take a health verdict: ``fatal`` fails the node, ``degraded`` pauses new work."""
        severity = Severity(severity)  # a probe's answer carries the plain string
        self.workers.get(worker_id) or self.register_worker(worker_id)
        self.verdicts.set_health(worker_id, severity, reasons)
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
            self.verdicts.set_answering(worker_id)
        elif not self.verdicts.silent(worker_id):
            if self._observer_suspect(extra=1):
                return False
            self.verdicts.set_silent(worker_id, reason or "stopped answering heartbeats")
        self._settle(worker_id)
        self._observer_suspect(extra=0)  # clears the suspicion once few enough look failed
        return True

    def failed_by_liveness(self, worker_id: str) -> bool:
        """The node stands failed because it stopped answering heartbeats."""
        return self.verdicts.silent(worker_id)

    def forget_liveness(self, worker_id: str) -> None:
        """The node left (its probe's history is dropped): its heartbeat verdict goes too."""
        if self.verdicts.set_answering(worker_id):
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
            self.failures.set_peer(worker_id, False)  # a dead node is nobody's peer
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
            self.node_breakers.forget(worker_id)
            self.failures.clear(worker_id)
            self.verdicts.forget(worker_id)
            self._crowd.nodes.discard(worker_id)
        if gone:
            self.version += 1
        return gone

    def node_reasons(self, worker_id: str) -> list[str]:
        """Why a node is not ALIVE: its liveness failure first, then its health reasons."""
        return self.verdicts.why(worker_id)

    def transitions_by_node(self, last: int) -> dict[str, list[dict[str, Any]]]:
        """Each node's last ``last`` breaker transitions, oldest first: one pass over the
        bounded history (``HISTORY_LIMIT``), not one per node."""
        return self.node_breakers.by_node_transitions(last)

    def excluded_workers(self) -> set[str]:
        """Nodes that must receive no new task: dead, failed, or OPEN breaker. A degraded
        node is not excluded: it is placed last (``degraded`` in the snapshot)."""
        excluded = {w for w, info in self.workers.items() if info.status not in TAKES_WORK}
        excluded.update(self.node_breakers.open_nodes())
        return excluded

    def half_open_workers(self) -> dict[str, int]:
        """HALF_OPEN nodes and the trial calls each still admits."""

        def taking(worker_id: str) -> bool:
            info = self.workers.get(worker_id)
            return info is not None and info.status in TAKES_WORK

        return self.node_breakers.half_open(taking)

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
        return self._snapshots.store(self.version, self.node_breakers.next_reopening(), lists)

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
        """Plan where tasks go: never to the failed node, a failed/dead one or an OPEN
        breaker (``ray_ft.manager.water_fill``); the caller dispatches and counts."""
        return plan_reassignment(
            failed_worker_id, task_ids, available_workers, self.workers, self.circuit_breakers
        )

    # -- checkpoints -------------------------------------------------------------------

    def recover_from_checkpoint(
        self, checkpoint: Mapping[str, Any], optimizer: BaseOptimizer
    ) -> int:
        """Restore optimizer state and population; return the generation to resume from
        (the seed's method; the format lives in :mod:`ray_ft.optim.checkpoint`)."""
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
        self.node_breakers.reconfigure(config.breaker_timeout, config.half_open_max_calls)
        self.version += 1  # snapshots carry what the settings decide: void them

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (failure events keep their wall times)."""
        saved = persist.decode(state)
        self.workers = saved.workers
        self.task_retries = saved.task_retries
        self.failed_tasks = saved.failed_tasks
        self.verdicts = NodeVerdicts.from_dict(state)
        self.node_breakers.load(state)
        self.version += 1  # every cached snapshot is void
        now = self._clock()  # dead nodes restored: their tombstone window starts again
        self._dead_since = {
            w: now for w, info in self.workers.items() if info.status == WorkerStatus.DEAD
        }
        self.failures = FailureLog.from_dict(state, frozenset(self._dead_since))

    def record_event(self, event: FailureEvent) -> None:
        """Keep a failure in the history and counters without charging any node."""
        self.failures.record(event)

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
            self.failures.record(event)

    # -- internals ---------------------------------------------------------------------

    def _charge(self, event: FailureEvent, *, outlier_only: bool) -> None:
        """Count a node fault in the window; open the breaker past the threshold."""
        worker_id = event.worker_id
        assert worker_id is not None
        in_window = self.failures.charge(
            worker_id,
            event,
            self._wall_clock(),
            self.config.failure_window,
            peer=worker_id not in self._dead_since,
        )
        breaker = self.breaker(worker_id)
        if breaker.state is BreakerState.HALF_OPEN:
            breaker.record_failure()
            return
        if in_window <= self.config.worker_failure_threshold or breaker.is_open():
            return
        if outlier_only and not self.failures.stands_out(worker_id):
            return
        breaker.open()

    def _settle(self, worker_id: str) -> None:
        """Recompute a node's status from its verdicts; a failed node's breaker opens."""
        info = self.workers[worker_id]
        status = self.verdicts.status(worker_id)
        if info.status in (WorkerStatus.DEAD, status):
            return
        if status == WorkerStatus.FAILED and not self.breaker(worker_id).is_open():
            self.breaker(worker_id).open()
        info.status = status
        self.version += 1
        self._note_degraded(worker_id, info)

    def _note_degraded(self, worker_id: str, info: WorkerInfo) -> None:
        """Keep the degraded crowd in step with one node's status."""
        live = len(self.workers) - len(self._dead_since)
        degraded = info.status == WorkerStatus.DEGRADED
        self._crowd.note(worker_id, degraded, live, self.health_reasons)

    def _changed(self) -> None:
        self.version += 1
