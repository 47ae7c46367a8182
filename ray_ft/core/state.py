"""What the scheduler knows, and the primitives every event is made of (pure: no Ray).

:class:`SchedulerState` holds the queues, the retry timers, the attempts in flight and the
counters, each field documented; it answers questions (idle, demand, summary) without a
rescan, and its primitives (start, drop, queue, end a call) keep every index right. How a
failure is judged lives in ``ray_ft.core.outcomes``; the events in ``ray_ft.core.scheduler``.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ray_ft.config import FTConfig
from ray_ft.core.attribution import CrashLedger, UserErrorRates
from ray_ft.core.autoscaling import Draining
from ray_ft.core.batching import batch_size, batch_timeout, take_members
from ray_ft.core.commands import Command, Exclusions, Launch, Report, Resolve
from ray_ft.core.failure_rules import FailureRules
from ray_ft.core.inflight import InFlight
from ray_ft.core.memory import MemoryPolicy
from ray_ft.core.nodes import NodeTable
from ray_ft.core.placement import Placement
from ray_ft.core.retry import RetryPolicy
from ray_ft.core.speculation import Stragglers
from ray_ft.core.trials import TrialLeases
from ray_ft.core.work import Attempt, Group, Shape, Work, WorkState
from ray_ft.failures import FailureEvent

__all__ = ["NullMetrics", "Outcome", "SchedulerState"]


class Outcome(enum.StrEnum):
    """How a call ended (also its key in ``stats``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NullMetrics:
    """Metrics that record nothing (no Ray metrics agent, or none wanted)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class SchedulerState:
    """The queues, timers, attempts in flight, per-node tables and counters of one
    executor, and the primitives that change them together."""

    def __init__(
        self,
        config: FTConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        queue_depth: int = 4,
        max_in_flight: int | None = None,
        metrics: Any = None,
        cancel_kills_worker: bool = False,
        batching: bool = False,
        home: str | None = None,
    ) -> None:
        self.config = config
        #: pack queued tiny calls of one callable into one task (``ray_ft.core.batching``)
        self.batching = batching
        #: attempts a node may hold beyond its slots, waiting in Ray's queue there
        self.queue_depth = queue_depth
        self.clock = clock  #: monotonic time: timers, deadlines, paces
        self.wall_clock = wall_clock  #: stamps failure events (the manager shows wall times)
        #: alive nodes, their load, paces and usability (``ray_ft.core.nodes``)
        self.table = NodeTable(clock, queue_depth, home)
        self.placement = Placement(config, self.table, clock)  #: which node a call goes to
        self.memory = MemoryPolicy(config, self.table)  #: out-of-memory retries ask for more
        self.max_in_flight = max_in_flight  #: attempts in flight at most (None: no cap)
        #: a Cancel kills the worker (an actor): that worker takes no work from then on
        self.cancel_kills_worker = cancel_kills_worker
        self.retired: set[str] = set()  #: such workers, until the node table drops them
        self.cancelling = False  #: shutdown(cancel_futures=True): nothing new starts
        self.metrics = metrics if metrics is not None else NullMetrics()
        #: what a failed attempt leads to: retry (when), rerun elsewhere, or end the call
        self.rules = FailureRules(RetryPolicy(config))
        self.ledger = CrashLedger()  #: system failures whose blame waits for the retry
        self.rates = UserErrorRates()  #: the user's failures per node, against its peers
        #: calls waiting for a slot, first in line first, one queue per request shape
        self.queues: dict[Shape, deque[Work]] = {}
        #: calls waiting out a retry delay: a heap of (due time, sequence, call)
        self.timers: list[tuple[float, int, Work]] = []
        self.inflight = InFlight()  #: the one table of attempts in flight
        self.exclusions = Exclusions()  #: the manager's last verdicts on nodes
        self.draining = Draining()  #: nodes with a drain notice (preemption, scale-down)
        self.drain_listed: dict[str, float] = {}  #: the manager's last list of them
        self.placement.draining = self.draining
        self._running: Counter[Shape] = Counter()  #: slots held in flight, per shape
        self.trials = TrialLeases(self.table, config.half_open_max_calls)  #: HALF_OPEN trials
        self.stragglers = Stragglers(config)  #: straggler cohorts and the backup budget
        self.speculative = 0  #: attempts in flight whose call may get a backup
        self.backups = 0  #: backup attempts in flight
        self.straggler_check_at = 0.0  #: when running attempts are next checked
        self._ids = itertools.count(1)  #: attempt ids
        self._seq = itertools.count()  #: timer tie-breaks (first come, first due)
        self.stats: Counter[str] = Counter()  #: counts behind ``summary()``
        self.failures_by_type: Counter[str] = Counter()  #: failures on record, by type
        self.user_errors: Counter[str] = Counter()  #: the user's own exceptions, by kind
        self.max_in_flight_seen = 0  #: the most attempts in flight at once

    # -- questions -----------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, dict[str, float]]:
        """Alive nodes and their resources (read-only: change them through events)."""
        return self.table.nodes

    @property
    def idle(self) -> bool:
        """Nothing queued, waiting on a timer, or in flight."""
        return not self.inflight and not self.timers and not self.queued()

    def next_wakeup(self) -> float | None:
        """Clock time of the next timer or deadline, None when there is none."""
        times = [
            t
            for t in (self.timers[0][0] if self.timers else None, self.inflight.next_deadline())
            if t is not None
        ]
        return min(times) if times else None

    def validate(self) -> None:
        """Check the invariants every event must keep; raise AssertionError naming the
        first one broken. O(attempts in flight + timers + nodes): for tests, run after
        every event (as Dask's ``validate_state``), never on the hot path."""

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise AssertionError(msg)

        attempts = list(self.inflight.values())
        running = {id(a.work) for a in attempts}
        for attempt in attempts:
            work = attempt.work
            check(work.state == WorkState.RUNNING, f"{work.name} in flight but {work.state!r}")
            check(work.failures <= self.config.max_retries, f"{work.name}: too many failures")
        for _, _, work in self.timers:
            check(
                id(work) in running or work.state == WorkState.BACKOFF,
                f"{work.name} on a retry timer but {work.state!r}",
            )
        slots: Counter[tuple[str, Shape]] = Counter()
        for node_id, shape, _ in {(a.node_id, a.work.shape, id(a.group or a)) for a in attempts}:
            slots[node_id, shape] += 1  # a batch holds one slot, whatever its members
        for (node_id, shape), count in slots.items():
            room = shape.slots_on(self.nodes.get(node_id, {})) * self.queue_depth
            check(count <= room, f"{count} attempts of {shape} on {node_id} (room {room})")
        if self.max_in_flight is not None:
            check(len(attempts) <= self.max_in_flight, f"{len(attempts)} in flight")
            check(sum(self.demand().values()) <= self.max_in_flight, "demand > max_in_flight")
        if not self.queued():
            check(self.demand() == {}, "demand without a queued call")
        copies: dict[int, list[Attempt]] = {}
        for attempt in attempts:
            copies.setdefault(id(attempt.work), []).append(attempt)
        for twins in copies.values():
            check(len(twins) <= 2, f"{twins[0].work.name}: {len(twins)} copies in flight")
            check(len({a.node_id for a in twins}) == len(twins), "a backup on its twin's node")
        for group in {id(a.group): a.group for a in attempts if a.group is not None}.values():
            live = [a for a in group.attempts if self.inflight.get(a.attempt_id) is a]
            check(group.live == len(live), f"a batch counts {group.live} live, has {len(live)}")
            check(len({a.work.kind for a in live}) <= 1, "a batch of several callables")
        sizes = self.table.sizes()
        bound = sizes["indexes"] * (4 * sizes["nodes"] + 64)
        check(sizes["index_entries"] <= bound, f"node indexes outgrew the nodes: {sizes}")

    def demand(self) -> dict[Shape, int]:
        """What this executor would run at once, per shape that has calls queued: those in
        flight plus those queued (``max_in_flight`` at most in all); the autoscaler's demand.
        Empty when no call waits for room. O(shapes)."""
        out: dict[Shape, int] = {}
        room = self.max_in_flight
        for shape, queue in self.queues.items():
            if not queue:
                continue
            count = self._running[shape] + len(queue)
            if room is not None:
                count = min(count, room)
                room -= count
            if count > 0:
                out[shape] = count
        return out

    def pending(self) -> int:
        """Calls queued or waiting out a retry delay."""
        return self.queued() + len(self.timers)

    def summary(self) -> dict[str, Any]:
        """The counters behind ``FaultTolerantExecutor.stats()``."""
        keys = ("submitted", "succeeded", "failed", "cancelled", "retries", "abandoned")
        types = self.placement.node_types
        return {
            **{k: self.stats[k] for k in keys},
            "speculated": self.stats["speculated"],
            "speculation_wins": self.stats["speculation_wins"],
            "replaced": self.stats["replaced"],
            "batches": self.stats["batches"],
            "batched_calls": self.stats["batched_calls"],
            "batch_splits": self.stats["batch_splits"],
            "batch_unrun": self.stats["batch_unrun"],
            "memory_raised": self.memory.raised(),
            "timeouts": self.stats["timeouts"],
            "failures_by_type": dict(self.failures_by_type),
            "user_errors": dict(self.user_errors),
            # nodes that left (scaled down, drained, dead) are gone, not excluded
            "excluded_nodes": sorted(
                (self.exclusions.excluded - self.exclusions.dead - self.draining.deadlines.keys())
                & self.nodes.keys()
            ),
            "draining_nodes": sorted(self.draining.deadlines),
            "preempted": self.stats["preempted"],
            "preemption_copies": self.stats["preemption_copies"],
            "degraded_nodes": sorted(self.exclusions.degraded),
            "in_flight": len(self.inflight),
            "max_in_flight_seen": self.max_in_flight_seen,
            "pending": self.pending(),
            "nodes": sorted(self.nodes),
            # the autoscaler's node types as this executor knows them (None: unknown)
            "node_types": None if types is None else types.describe(),
        }

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    # -- primitives ----------------------------------------------------------------------

    def queue(self, work: Work, *, front: bool = True) -> None:
        """Put a call in line for a slot: first (a rerun, a fired timer) or last (new)."""
        work.state = WorkState.QUEUED
        queue = self.queues.setdefault(work.shape, deque())
        if front:
            queue.appendleft(work)
        else:
            queue.append(work)

    def wait_out(self, work: Work, due: float) -> None:
        """A call waits out a retry delay until ``due`` (then ``tick`` queues it first)."""
        work.state = WorkState.BACKOFF
        heapq.heappush(self.timers, (due, next(self._seq), work))

    def take_waiting(self) -> list[Work]:
        """Every call queued or waiting out a retry delay, taken out of both."""
        works = [w for q in self.queues.values() for w in q] + [w for _, _, w in self.timers]
        self.queues.clear()
        self.timers.clear()
        return works

    def start(
        self, work: Work, node_id: str, trial: bool, now: float, group: Group | None = None
    ) -> Attempt:
        attempt_id = next(self._ids)
        work.stranded_since = None
        work.state = WorkState.RUNNING
        first = group is None or not group.attempts  # a batch holds one slot, one deadline
        deadline = None if work.timeout is None else now + batch_timeout(work.timeout, group)
        if first:
            slots = work.shape.slots_on(self.nodes.get(node_id, {}))
            queued_behind = self.table.load[(node_id, work.shape)] >= slots
        else:
            queued_behind = group.attempts[0].queued_behind  # type: ignore[union-attr]
        attempt = Attempt(work, node_id, deadline, trial, attempt_id, now, queued_behind)
        attempt.group = group
        if group is not None:
            group.attempts.append(attempt)
        if trial:
            self.trials.use(node_id)
        self.inflight.add(attempt, timed=first)
        if first:
            self.table.add_load(node_id, work.shape, +1)
            self._running[work.shape] += 1
        self.table.started(node_id, work.kind, attempt_id, now)
        self.speculative += work.speculate
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.inflight))
        return attempt

    def drop(self, attempt: Attempt) -> None:
        self.inflight.remove(attempt)
        self.table.stopped(attempt.node_id, attempt.work.kind, attempt.attempt_id)
        group = attempt.group
        if group is not None:
            group.live -= 1
        if group is None or group.live == 0:  # a batch frees its slot with its last member
            self.table.add_load(attempt.node_id, attempt.work.shape, -1)
            shape = attempt.work.shape
            self._running[shape] -= 1
            if self._running[shape] <= 0:
                del self._running[shape]
        if attempt.trial:
            self.trials.ended(attempt.node_id)
        self.speculative -= attempt.work.speculate
        self.backups -= attempt.backup

    def learn(self, attempt: Attempt, now: float) -> float:
        """The attempt's runtime per call, folded into its node's pace (a batch once)."""
        group = attempt.group
        if group is not None and group.runtime is not None:
            return group.runtime
        members = 1 if group is None else len(group.attempts)
        runtime = self.table.learn(
            attempt.node_id,
            attempt.work.kind,
            attempt.launched_at,
            attempt.queued_behind,
            now,
            members,
        )
        if group is not None:
            group.runtime = runtime
        return runtime

    def end(
        self,
        work: Work,
        outcome: Outcome,
        *,
        value: Any = None,
        error: BaseException | None = None,
        runtime: float | None = None,
        on: Attempt | None = None,
    ) -> list[Command]:
        """The one way a call ends, once: counted by its outcome, its straggler cohort
        told, its undecided failures settled (cleared by the node it succeeded ``on``, or
        charged to nobody), its future resolved (one cancelled while queued stays so)."""
        if work.state == WorkState.DONE:
            return []
        work.state = WorkState.DONE
        self.stats[outcome] += 1
        if work.cohort is not None:
            self.stragglers.finished(work.kind, work.cohort, runtime)
            work.cohort = None
        out = self.settle(work, on)
        if not work.started:
            work.future.cancel()
            return out
        out.append(Resolve(work.future, value=value, error=error))
        return out

    def settle(self, work: Work, on: Attempt | None = None) -> list[Command]:
        """Decide the call's undecided failures (cleared by the node it succeeded ``on``,
        or charged to nobody); a second call finds nothing left."""
        if not work.failures:
            return []
        if on is not None:
            decided = self.ledger.succeeded(work.task_id, on.node_id)
        else:
            decided = self.ledger.finished(work.task_id)
        return self.reports(work, decided)

    def reports(self, work: Work, decided: list[FailureEvent]) -> list[Command]:
        """Report failures whose blame is now known; note it on the work's own events."""
        if not decided:
            return []
        blames = {e.attempt: e.blame for e in decided if e.task_id == work.task_id}
        if blames and work.events:
            work.events = [
                dataclasses.replace(e, blame=blames[e.attempt]) if e.attempt in blames else e
                for e in work.events
            ]
        return [Report(tuple(decided))]

    def batch_members(self, head: Work, queue: deque[Work], node_id: str) -> list[Work]:
        """The head call and the queued calls packed with it: the same callable and
        request, as many as its pace asks for (``ray_ft.core.batching.batch_size``)."""
        size = batch_size(
            self.table.paces.get(node_id, head.kind),
            len(queue) + 1,
            self.table.total_slots(head.shape),
            head.batch_cap,
        )
        if self.max_in_flight is not None:
            size = min(size, self.max_in_flight - len(self.inflight))
        members, ended = take_members(head, queue, node_id, size)
        for work in ended:
            self.end(work, Outcome.CANCELLED)  # nothing to say: cancelled while queued, or ended
        return members

    def start_group(self, members: list[Work], node_id: str, now: float) -> tuple[Attempt, ...]:
        """Start a batch: one attempt per member, holding one slot together."""
        group = Group([], live=len(members))
        pace = self.table.paces.get(node_id, members[0].kind)
        if pace is not None:
            group.expected = pace * len(members)
        for work in members:
            self.start(work, node_id, False, now, group)
        self.stats["batches"] += 1
        self.stats["batched_calls"] += len(members)
        return tuple(group.attempts)

    def twin_running(self, work: Work) -> bool:
        return self.inflight.has_twin(work)

    def copied(self, attempt: Attempt) -> bool:
        """The attempt's call has another copy in flight."""
        return any(t is not attempt for t in self.inflight.twins(attempt.work))

    def start_copy(self, work: Work, node_id: str, now: float, counter: str) -> Launch:
        """A second copy of a running call on another node (a straggler's backup, or a
        preemption's copy): the first result wins, the other is cancelled."""
        work.speculated = True
        copy = self.start(work, node_id, False, now)
        copy.backup = True
        self.backups += 1
        self.stats[counter] += 1
        return Launch(copy)
