"""The executor's brain: a pure, single-threaded scheduler (no Ray, injected clock).

Events go in (submitted, attempt finished, launch failed, nodes changed, exclusions changed,
trial granted, tick); commands come out (launch, cancel, resolve, report, acquire and
release trial leases). It owns the queues, the retry timer heap, the deadlines, capacity
and placement, fault attribution and trial leases. The Ray loop (``ray_ft.runtime.loop``) holds
its lock only to exchange events and commands, and carries the commands out.

Placement (``ray_ft.core.placement``) adapts to how fast each node finishes work. A straggling
attempt gets one backup on another node in a free slot (``ray_ft.core.speculation``): the first
result wins. An out-of-memory retry asks for more memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import heapq
import itertools
import pickle
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ray_ft.config import FTConfig
from ray_ft.core.attribution import Blame, CrashLedger, UserErrorRates
from ray_ft.core.batching import batch_size, batch_timeout, batchable, take_members
from ray_ft.core.commands import (
    AcquireTrial,
    Cancel,
    CapacityError,
    Command,
    Exclusions,
    Launch,
    LaunchBatch,
    ReleaseTrial,
    Report,
    Resolve,
)
from ray_ft.core.elastic import Draining, NodeTypes
from ray_ft.core.inflight import InFlight
from ray_ft.core.memory import MemoryPolicy
from ray_ft.core.nodes import NodeTable
from ray_ft.core.placement import Placement
from ray_ft.core.retry import RetryPolicy
from ray_ft.core.speculation import Stragglers
from ray_ft.core.trials import TrialLeases
from ray_ft.core.work import Attempt, Group, Shape, Work
from ray_ft.failures import (
    FailureEvent,
    FailureType,
    NodeFailedError,
    TaskFailedError,
    TaskTimeoutError,
    user_error_kind,
)

__all__ = ["NullMetrics", "Outcome", "Scheduler"]

Outcome = Literal["succeeded", "failed", "cancelled"]  # how a call ended (a stats key)

_STRAGGLER_CHECK_S = 0.1  # how often running attempts are checked for stragglers


class NullMetrics:
    """Metrics that record nothing (no Ray metrics agent, or none wanted)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class Scheduler:
    """Queues, timers, deadlines, capacity and attribution, over the node table and the
    placement, retry, memory and straggler policies."""

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
    ) -> None:
        self.config = config
        self.batching = batching  # pack queued tiny calls of one callable (ray_ft.core.batching)
        self.queue_depth = queue_depth
        self._clock = clock
        self._wall_clock = wall_clock  # stamps failure events (the manager shows wall times)
        self.table = NodeTable(clock, queue_depth)
        self.placement = Placement(config, self.table, clock)
        self.memory = MemoryPolicy(config, self.table)
        self.max_in_flight = max_in_flight
        # a worker that a Cancel kills (an actor) takes no work from then on
        self.cancel_kills_worker = cancel_kills_worker
        self._retired: set[str] = set()  # such workers, until the node table drops them
        self._cancelling = False  # shutdown(cancel_futures=True): nothing new starts
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._retry = RetryPolicy(config)
        self._ledger = CrashLedger()
        self._rates = UserErrorRates()
        self._queues: dict[Shape, deque[Work]] = {}
        self._timers: list[tuple[float, int, Work]] = []
        self.inflight = InFlight()
        self.exclusions = Exclusions()
        self.draining = Draining()  # nodes with a drain notice (preemption, scale-down)
        self._drain_listed: dict[str, float] = {}  # the manager's last list of them
        self.placement.draining = self.draining
        self._running: Counter[Shape] = Counter()  # slots held in flight, per shape
        self.trials = TrialLeases(self.table, config.half_open_max_calls)
        self._stragglers = Stragglers(config)
        self._speculative = 0  # attempts in flight whose work may get a backup
        self._backups = 0  # backup attempts in flight
        self._straggler_check_at = 0.0
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self.stats: Counter[str] = Counter()
        self.failures_by_type: Counter[str] = Counter()
        self.user_errors: Counter[str] = Counter()  # the user's own exceptions, by kind
        self.max_in_flight_seen = 0

    @property
    def nodes(self) -> dict[str, dict[str, float]]:
        """Alive nodes and their resources (read-only: change them through events)."""
        return self.table.nodes

    # -- events --------------------------------------------------------------------------

    def submit(self, work: Work) -> list[Command]:
        """A new call: queue it, and launch it at once where a node has room."""
        return self.submit_all([work])

    def submit_all(self, works: list[Work]) -> list[Command]:
        """New calls (a map): queue them all, then launch where nodes have room."""
        for work in works:
            self.stats["submitted"] += 1
            speculation = work.spec.speculation
            if speculation if speculation is not None else self.config.speculation:
                work.speculate = True
                work.cohort = self._stragglers.submitted(work.kind)
            if self.memory:
                self.memory.feed(work)
            self._queues.setdefault(work.shape, deque()).append(work)
        return self._dispatch(self._clock())

    def attempt_done(
        self,
        attempt_id: int,
        *,
        value: Any = None,
        error: BaseException | None = None,
        failure_type: FailureType | None = None,
        placement: bool = False,
    ) -> list[Command]:
        """An attempt's outcome. ``error`` is the user's own exception where there is one;
        ``placement`` marks Ray's 'cannot schedule there' (re-placed, charging nobody)."""
        attempt = self.inflight.get(attempt_id)
        if attempt is None:
            return []  # abandoned, timed out or cancelled: a late result is dropped
        now = self._clock()
        self._drop(attempt)
        out: list[Command] = []
        work = attempt.work
        if error is None:
            self._rates.finished(attempt.node_id, failed=False)
            runtime = self._learn(attempt, now)
            if work.speculated:  # the first result wins; its twin is cancelled and dropped
                out.extend(self._drop_twins(work))
                self.stats["speculation_wins"] += attempt.backup
            if attempt.trial:
                out.append(ReleaseTrial(attempt.node_id, True))
            if work.first_failure_at is not None:
                self._metrics.recovered(now - work.first_failure_at)
            out.extend(self._end(work, "succeeded", value=value, runtime=runtime, on=attempt))
        elif placement:
            out.extend(self._placement_failed(attempt, error))
        else:
            out.extend(self._failed(attempt, error, failure_type or FailureType.APPLICATION_ERROR))
        out.extend(self._dispatch(now))
        return out

    def launch_failed(self, attempt_id: int, error: BaseException) -> list[Command]:
        """Ray refused the launch (the arguments do not pickle, an option is refused): the
        call fails at once; no other call is touched."""
        attempt = self.inflight.get(attempt_id)
        if attempt is None:
            return []
        self._drop(attempt)
        out: list[Command] = []
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False))
        if attempt.work.speculated and self._twin_running(attempt.work):
            return out  # the first launch of these same arguments went through
        name = attempt.work.name
        if _is_pickling_error(error):
            msg = (
                f"could not serialize the call to {name}: {error}; pass picklable "
                "arguments (Ray pickles them to ship them to a worker)"
            )
            failure: BaseException = TypeError(msg)
        else:
            msg = f"Ray refused to launch {name}: {type(error).__name__}: {error}"
            failure = RuntimeError(msg)
        failure.__cause__ = error
        return [*out, *self._fail(attempt.work, failure)]

    def abort(self, attempt: Attempt, error: BaseException) -> list[Command]:
        """ray_ft itself failed while taking this attempt's outcome: end its call with
        ``error`` rather than leave it pending (the loop's last line of defence)."""
        if self.inflight.get(attempt.attempt_id) is attempt:
            self._drop(attempt)
        out: list[Command] = []
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False))
        if attempt.work.future.done():
            return out
        return [*out, *self._fail(attempt.work, error)]

    def nodes_changed(self, nodes: Mapping[str, Mapping[str, float]]) -> list[Command]:
        """Ray's alive nodes and their resources; work on vanished nodes is rerun."""
        self._retired &= set(nodes)  # a retired worker the table no longer lists is gone
        incoming = {n: r for n, r in nodes.items() if n not in self._retired}
        out: list[Command] = []
        for node_id in [n for n in self.nodes if n not in incoming]:
            if node_id in self.draining:  # it left on notice: nobody's fault
                out.extend(self._abandon_node(node_id, "was drained (preempted)", preempted=True))
            else:
                out.extend(self._abandon_node(node_id, "is dead (Ray)"))
            self._forget_node(node_id)
        self.table.set_nodes(incoming)
        out.extend(self._dispatch(self._clock()))
        return out

    def worker_lost(self, node_id: str, reason: str) -> list[Command]:
        """A worker (an actor) is gone for good: it takes no more work, even if a stale
        node table still lists it, and its attempts rerun elsewhere, charging nobody."""
        if node_id not in self.nodes:
            return []
        self._retired.add(node_id)
        out = self._abandon_node(node_id, reason)
        self._forget_node(node_id)
        self.table.remove(node_id)
        return out

    def _forget_node(self, node_id: str) -> None:
        """A node left: the scheduler's own per-node tables drop it (the table's too)."""
        self._rates.forget(node_id)
        self.draining.forget(node_id)
        self._drain_listed.pop(node_id, None)
        self.inflight.forget_node(node_id)
        self.trials.forget(node_id)

    def exclusions_changed(self, snapshot: Exclusions) -> list[Command]:
        """A new manager snapshot: failed or dead nodes lose their attempts; HALF_OPEN
        nodes get a trial lease request when queued work could use one."""
        before = self.exclusions.failed | self.exclusions.dead
        self.exclusions = snapshot
        unusable = snapshot.excluded | {n for n, _ in snapshot.half_open}
        self.table.set_unusable(unusable | self.draining.deadlines.keys())
        self.table.set_degraded(snapshot.degraded - unusable)  # placed last, not excluded
        out: list[Command] = []
        for node_id in (snapshot.failed | snapshot.dead) - before:
            out.extend(self._abandon_node(node_id, "was declared failed by the manager"))
        self.trials.void_except(n for n, _ in snapshot.half_open)
        out.extend(self._dispatch(self._clock()))
        return out

    def node_types_changed(self, types: NodeTypes | None) -> list[Command]:
        """The worker types the cluster's autoscaler can launch (None: no autoscaler, or
        unknown): queued work that fits none of them fails at once."""
        self.placement.node_types = types
        return self._dispatch(self._clock())

    def draining_changed(self, deadlines: Mapping[str, float]) -> list[Command]:
        """Nodes with a drain notice and their deadlines (this clock; 0: none): they take
        no new work, and attempts that would outlive the deadline get a copy elsewhere."""
        now = self._clock()
        self._drain_listed = dict(deadlines)
        self._follow_drains(now)
        out = self._cover_draining(now)
        out.extend(self._dispatch(now))
        return out

    def _follow_drains(self, now: float) -> None:
        """The manager's last drain list into ``draining`` (an undone drain leaves after a
        grace); the node table's unusable set follows."""
        before = set(self.draining.deadlines)
        self.draining.update(self._drain_listed, now)
        if set(self.draining.deadlines) != before:
            excl = self.exclusions
            unusable = excl.excluded | {n for n, _ in excl.half_open}
            self.table.set_unusable(unusable | self.draining.deadlines.keys())

    def _cover_draining(self, now: float) -> list[Command]:
        """A copy, in a free slot elsewhere, of each attempt that would still run when its
        draining node goes (the first result wins, as for a straggler's backup)."""
        out: list[Command] = []
        for node_id in list(self.draining.deadlines):
            for attempt in self.inflight.on_node(node_id):
                work = attempt.work
                if attempt.group is not None or attempt.backup or self._copied(attempt):
                    continue
                pace = self.table.runtime.get((node_id, work.kind))
                if not self.draining.outlives(node_id, attempt.launched_at, pace, now):
                    continue
                if self.max_in_flight is not None and len(self.inflight) >= self.max_in_flight:
                    return out
                target = self.placement.backup_node(work, node_id, float("inf"))
                if target is None:
                    continue
                out.append(self._start_copy(work, target, now, "preemption_copies"))
        return out

    def _start_copy(self, work: Work, node_id: str, now: float, counter: str) -> Launch:
        """A second copy of a running call on another node (a straggler's backup, or a
        preemption's copy): the first result wins, the other is cancelled."""
        work.speculated = True
        copy = self._start(work, node_id, False, now)
        copy.backup = True
        self._backups += 1
        self.stats[counter] += 1
        return Launch(copy)

    def _copied(self, attempt: Attempt) -> bool:
        """The attempt's call has another copy in flight."""
        return any(t is not attempt for t in self.inflight.twins(attempt.work))

    def trial_granted(self, node_id: str, granted: bool) -> list[Command]:
        """The manager's answer to an AcquireTrial."""
        if not granted:
            self.trials.answered(node_id, False)
            return []
        half_open = dict(self.exclusions.half_open)
        if node_id not in half_open or node_id not in self.nodes or not self._queued():
            self.trials.answered(node_id, False)
            return [ReleaseTrial(node_id, False)]  # nothing (or nowhere) to try: give it back
        self.trials.answered(node_id, True)
        return self._dispatch(self._clock())

    def tick(self) -> list[Command]:
        """Fire due retry timers and deadlines, dispatch, fail work with no capacity."""
        now = self._clock()
        out: list[Command] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, work = heapq.heappop(self._timers)
            work.state = "queued"
            self._queues.setdefault(work.shape, deque()).appendleft(work)
        for attempt_id in self.inflight.due(now):
            attempt = self.inflight.get(attempt_id)
            if attempt is not None and attempt.group is not None and attempt.group.live > 1:
                self.stats["timeouts"] += 1
                waited = (attempt.deadline or now) - attempt.launched_at
                error = TaskTimeoutError(waited, attempt.work.name)
                out.extend(self._split(attempt.group, error, cancel=True))
            elif attempt is not None:
                self.stats["timeouts"] += 1
                self._drop(attempt)
                out.extend(self._cancel(attempt))
                timeout = attempt.work.timeout or 0.0
                error = TaskTimeoutError(timeout, attempt.work.name)
                out.extend(self._failed(attempt, error, FailureType.TASK_TIMEOUT))
        if self.draining:
            self._follow_drains(now)
            out.extend(self._cover_draining(now))
        out.extend(self._dispatch(now))
        if self._speculative and now >= self._straggler_check_at:
            self._straggler_check_at = now + _STRAGGLER_CHECK_S
            out.extend(self._speculate(now))
        return out

    def cancel_queued(self) -> list[Command]:
        """shutdown(cancel_futures=True): every call not running now ends at once, those
        waiting out a retry delay included; running attempts finish, and one that fails
        from now on ends instead of being retried."""
        self._cancelling = True
        works = [w for q in self._queues.values() for w in q] + [w for _, _, w in self._timers]
        self._queues.clear()
        self._timers.clear()
        out: list[Command] = []
        for work in works:
            out.extend(self._end_cancelled(work))
        return [*out, *self.release_leases()]

    def give_up(self, works: list[Work]) -> list[Command]:
        """The caller will not take these calls' results (their map() iterator was closed
        or timed out): a queued call is cancelled, a running one's attempts are stopped,
        and it ends with CancelledError; nobody is charged."""
        out: list[Command] = []
        waiting = False  # some call waits out a retry delay: its timer goes too
        for work in works:
            if work.future.done() or work.given_up:
                continue
            if not work.started:
                work.future.cancel()  # its queue entry is consumed by the next dispatch
                continue
            work.given_up = True
            attempts = self.inflight.twins(work)
            waiting = waiting or not attempts
            for attempt in attempts:
                self._drop(attempt)
                out.extend(self._cancel(attempt))
                if attempt.trial:
                    out.append(ReleaseTrial(attempt.node_id, False))
            msg = f"{work.name} was given up: the map() iterator waiting for it was closed"
            out.extend(self._end(work, "cancelled", error=cf.CancelledError(msg)))
        if waiting:  # one pass for the whole set (a closed map gives up many at once)
            self._timers = [t for t in self._timers if not t[2].given_up]
            heapq.heapify(self._timers)
        return [*out, *self._dispatch(self._clock())]

    def fail_queued(self, error: BaseException) -> list[Command]:
        """Fail every queued or waiting call with ``error`` (the workers cannot start)."""
        out: list[Command] = []
        works = [w for q in self._queues.values() for w in q] + [w for _, _, w in self._timers]
        for queue in self._queues.values():
            queue.clear()
        self._timers.clear()
        for work in works:
            if not work.started and not work.future.set_running_or_notify_cancel():
                continue
            work.started = True
            out.extend(self._end(work, "failed", error=error))
        return out

    def release_leases(self) -> list[Command]:
        """Give back every trial lease held but not used (shutdown, or an idle executor)."""
        return [ReleaseTrial(node_id, False) for node_id in self.trials.release_all()]

    # -- questions -----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued, waiting on a timer, or in flight."""
        return not self.inflight and not self._timers and not self._queued()

    def next_wakeup(self) -> float | None:
        """Clock time of the next timer or deadline, None when there is none."""
        times = [
            t
            for t in (self._timers[0][0] if self._timers else None, self.inflight.next_deadline())
            if t is not None
        ]
        return min(times) if times else None

    def demand(self) -> dict[Shape, int]:
        """What this executor would run at once, per shape that has calls queued: those in
        flight plus those queued (``max_in_flight`` at most in all); the autoscaler's demand.
        Empty when no call waits for room. O(shapes)."""
        out: dict[Shape, int] = {}
        room = self.max_in_flight
        for shape, queue in self._queues.items():
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
        return self._queued() + len(self._timers)

    def summary(self) -> dict[str, Any]:
        """The counters behind ``FaultTolerantExecutor.stats()``."""
        keys = ("submitted", "succeeded", "failed", "cancelled", "retries", "abandoned")
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
        }

    # -- placement -----------------------------------------------------------------------

    def _queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _dispatch(self, now: float) -> list[Command]:
        out: list[Command] = []
        for shape, queue in self._queues.items():
            stranded: list[Work] = []
            while queue:
                if self._cancelling:
                    out.extend(self._end_cancelled(queue.popleft()))
                    continue
                if self.max_in_flight is not None and len(self.inflight) >= self.max_in_flight:
                    break
                work = queue[0]
                if work.state == "done":  # ended elsewhere (a twin won, given up, aborted)
                    queue.popleft()
                    continue
                picked = self.placement.pick(work, len(queue))
                if picked is None:
                    if not work.unplaceable or self.table.could_run(work):
                        break  # no room now: the queue waits in order
                    stranded.append(queue.popleft())  # only nodes Ray refused fit it
                    continue
                queue.popleft()
                if not work.started:
                    if not work.future.set_running_or_notify_cancel():
                        out.extend(self._end(work, "cancelled"))
                        # the pick took the node's heap entry: give it back, or the node
                        # would get no more of this work until its next event
                        self.table.unpick(picked[0], work.shape, work.kind)
                        continue  # cancelled while queued: consumed, nothing to run
                    work.started = True
                if self.batching and not picked[1] and batchable(work):
                    members = self._batch_members(work, queue, picked[0])
                    if len(members) > 1:
                        out.append(LaunchBatch(self._start_group(members, picked[0], now)))
                        continue
                out.append(Launch(self._start(work, picked[0], picked[1], now)))
            out.extend(self._check_capacity(shape, queue, now))
            if stranded:
                out.extend(self._strand(stranded, queue, now))
        for shape in [s for s, q in self._queues.items() if not q]:
            del self._queues[shape]  # a shape seen once keeps no empty queue
        out.extend(self._ask_for_trials())
        return out

    def _start(
        self, work: Work, node_id: str, trial: bool, now: float, group: Group | None = None
    ) -> Attempt:
        attempt_id = next(self._ids)
        work.stranded_since = None
        work.state = "running"
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
        self._speculative += work.speculate
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.inflight))
        return attempt

    def _check_capacity(self, shape: Shape, queue: deque[Work], now: float) -> list[Command]:
        msg = self.placement.starved(shape, bool(queue), now)
        out: list[Command] = []
        while msg is not None and queue:
            out.extend(self._capacity_failed(queue.popleft(), msg))
        return out

    def _strand(self, works: list[Work], queue: deque[Work], now: float) -> list[Command]:
        """Calls no usable node can take (Ray refused the others) wait aside, not ahead of
        the queue, and fail with CapacityError after ``capacity_wait_timeout``."""
        out: list[Command] = []
        for work in reversed(works):
            msg = self.placement.stranded(work, now)
            if msg is None:
                queue.appendleft(work)  # tried first again once nodes change
            else:
                out.extend(self._capacity_failed(work, msg))
        return out

    def _capacity_failed(self, work: Work, msg: str) -> list[Command]:
        if not work.started and not work.future.set_running_or_notify_cancel():
            return []  # cancelled while it waited
        work.started = True
        return self._fail(work, CapacityError(msg))

    def _fail(self, work: Work, error: BaseException) -> list[Command]:
        """End a call with ``error`` (its undecided failures charge nobody)."""
        return self._end(work, "failed", error=error)

    def _end_cancelled(self, work: Work) -> list[Command]:
        """End a call that will not run again: a pending future is cancelled, a running
        one (it waited to retry, or to be re-placed) ends with CancelledError."""
        msg = (
            f"{work.name} was waiting to run again when the executor was shut down with "
            "cancel_futures=True"
        )
        return self._end(work, "cancelled", error=cf.CancelledError(msg))

    def _ask_for_trials(self) -> list[Command]:
        """Lease requests for HALF_OPEN nodes, only while work is queued that could use them."""
        if not self.exclusions.half_open or not self._queued():
            return []
        return [AcquireTrial(n) for n in self.trials.to_ask(self.exclusions.half_open)]

    # -- batches -------------------------------------------------------------------------

    def batch_failed(
        self,
        attempt_ids: list[int],
        error: BaseException,
        failure_type: FailureType,
        *,
        placement: bool = False,
        launch: bool = False,
    ) -> list[Command]:
        """A batch died as a whole (its worker, its node, Ray refused it): its members are
        split in halves and run again, charging nobody, so a poison member ends up alone
        and fails by itself; a lone member's failure is an ordinary one."""
        live = [a for a in (self.inflight.get(i) for i in attempt_ids) if a is not None]
        if not live:
            return []
        if len(live) == 1:
            if launch:
                return self.launch_failed(live[0].attempt_id, error)
            return self.attempt_done(
                live[0].attempt_id, error=error, failure_type=failure_type, placement=placement
            )
        assert live[0].group is not None
        out = self._split(live[0].group, error, cancel=False)
        out.extend(self._dispatch(self._clock()))
        return out

    def batch_unrun(self, attempt_ids: list[int], ran: int) -> list[Command]:
        """Members a batch did not run (its results filled its memory budget): first in
        line again, uncharged, in batches no bigger than the part that ran."""
        live = [a for a in (self.inflight.get(i) for i in attempt_ids) if a is not None]
        self.stats["batch_unrun"] += len(live)
        for attempt in live:
            self._drop(attempt)
        for attempt in reversed(live):
            attempt.work.batch_cap = max(1, ran)
            attempt.work.state = "queued"
            self._queues.setdefault(attempt.work.shape, deque()).appendleft(attempt.work)
        return self._dispatch(self._clock())

    def _split(self, group: Group, error: BaseException, *, cancel: bool) -> list[Command]:
        """Run a dead or timed-out batch's members again in two halves, first in line."""
        live = [a for a in group.attempts if self.inflight.get(a.attempt_id) is a]
        self.stats["batch_splits"] += 1
        half = (len(live) + 1) // 2
        out: list[Command] = []
        for attempt in live:
            self._drop(attempt)
            if cancel:
                out.append(Cancel(attempt))
        out.extend(self._on_record(live[0], error, FailureType.APPLICATION_ERROR, Blame.NONE))
        for attempt in reversed(live):
            attempt.work.batch_cap = half
            attempt.work.state = "queued"
            self._queues.setdefault(attempt.work.shape, deque()).appendleft(attempt.work)
        return out

    def _batch_members(self, head: Work, queue: deque[Work], node_id: str) -> list[Work]:
        """The head call and the queued calls packed with it: the same callable and
        request, as many as its pace asks for (``ray_ft.core.batching.batch_size``)."""
        size = batch_size(
            self.table.runtime.get((node_id, head.kind)),
            len(queue) + 1,
            self.table.total_slots(head.shape),
            head.batch_cap,
        )
        if self.max_in_flight is not None:
            size = min(size, self.max_in_flight - len(self.inflight))
        members, ended = take_members(head, queue, node_id, size)
        for work in ended:
            self._end(work, "cancelled")  # nothing to say: cancelled while queued, or ended
        return members

    def _start_group(self, members: list[Work], node_id: str, now: float) -> tuple[Attempt, ...]:
        group = Group([], live=len(members))
        pace = self.table.runtime.get((node_id, members[0].kind))
        if pace is not None:
            group.expected = pace * len(members)
        for work in members:
            self._start(work, node_id, False, now, group)
        self.stats["batches"] += 1
        self.stats["batched_calls"] += len(members)
        return tuple(group.attempts)

    def _learn(self, attempt: Attempt, now: float) -> float:
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

    # -- outcomes ------------------------------------------------------------------------

    def _drop(self, attempt: Attempt) -> None:
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
        self._speculative -= attempt.work.speculate
        self._backups -= attempt.backup

    def _abandon_node(self, node_id: str, reason: str, *, preempted: bool = False) -> list[Command]:
        """Rerun a failed (or drained) node's attempts elsewhere at once: ray_ft's own
        verdict, so it charges nobody (neither the node's breaker nor the task's retries)."""
        out: list[Command] = []
        for attempt in self.inflight.on_node(node_id):
            self._drop(attempt)
            out.append(Cancel(attempt))
            error = NodeFailedError(node_id, reason)
            out.extend(self._node_gone(attempt, error, preempted=preempted))
        return out

    def _node_gone(
        self, attempt: Attempt, error: BaseException, *, preempted: bool
    ) -> list[Command]:
        """The attempt's node went (dead, or drained: a preemption): nobody's fault."""
        if preempted:
            self.stats["preempted"] += 1
            self.failures_by_type["preempted"] += 1
        else:
            self.stats["abandoned"] += 1
        return self._requeue(attempt, error, FailureType.NODE_DIED, Blame.NONE)

    def _cancel(self, attempt: Attempt) -> list[Command]:
        """Cancel a dropped attempt; where that kills its worker (an actor), the worker
        takes no more work and its other attempts rerun elsewhere."""
        out: list[Command] = [Cancel(attempt)]
        if self.cancel_kills_worker:
            out.extend(self.worker_lost(attempt.node_id, "had its worker stopped"))
        return out

    def _requeue(
        self, attempt: Attempt, error: BaseException, kind: FailureType, blame: Blame
    ) -> list[Command]:
        """Run the call again elsewhere, first in line, charging no retry; the failure is
        put on record as ``kind`` with ``blame``."""
        work = attempt.work
        out = self._on_record(attempt, error, kind, blame)
        work.avoid = work.avoid | {attempt.node_id}
        if not (work.speculated and self._twin_running(work)):
            work.state = "queued"
            self._queues.setdefault(work.shape, deque()).appendleft(work)
        return out

    def _blame_user_error(self, attempt: Attempt, error: BaseException) -> bool:
        """The user's own exception: count its kind; True when its node's user failures
        stand far above its peers' (the only way it counts against a node)."""
        kind = user_error_kind(error)
        if kind is not None:
            self.user_errors[kind] += 1
        return self._rates.finished(attempt.node_id, failed=True)

    def _on_record(
        self, attempt: Attempt, error: BaseException, kind: FailureType, blame: Blame
    ) -> list[Command]:
        """A failure put on record that charges neither the node nor the task's retries."""
        event = FailureEvent(
            timestamp=self._wall_clock(),
            failure_type=kind,
            details=f"{type(error).__name__}: {error}"[:500],
            task_id=attempt.work.task_id,
            worker_id=attempt.node_id,
            blame=blame.value,
        )
        out: list[Command] = [Report((event,))]
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False))
        return out

    def _placement_failed(self, attempt: Attempt, error: BaseException) -> list[Command]:
        """Ray could not schedule a pinned attempt there: re-place it, charging nobody.

        On a node Ray has dropped this is a node death seen early; on a live node the
        request does not fit there. Either way it is no retry; a request that fits nowhere
        fails with CapacityError after a few placements.
        """
        work = attempt.work
        work.placement_failures += 1
        work.unplaceable = work.unplaceable | {attempt.node_id}
        if work.speculated and self._twin_running(work):
            return self._on_record(attempt, error, FailureType.APPLICATION_ERROR, Blame.PLACEMENT)
        if not self.table.could_run(work):
            msg = (
                f"Ray could not schedule {work.name} (needs {work.shape.describe()}) on any "
                f"of the {len(work.unplaceable)} nodes that seemed to fit: {error}; lower the "
                "request or add nodes that can meet it"
            )
            return self._capacity_failed(work, msg)
        self.stats["replaced"] += 1
        return self._requeue(attempt, error, FailureType.APPLICATION_ERROR, Blame.PLACEMENT)

    def _failed(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> list[Command]:
        work = attempt.work
        if attempt.node_id in self.draining and failure_type.is_system:
            # killed by its node's drain (a preemption): Ray does not count these, nor do we
            return self._node_gone(attempt, error, preempted=True)
        if work.speculated and self._twin_running(work):
            # one copy failed while the other still runs (Spark's rule): no retry counted
            self.stats["speculation_failures"] += 1
            return self._on_record(attempt, error, failure_type, Blame.NONE)
        now = self._clock()
        work.failures += 1
        decision = self._retry.decide(work.failures, failure_type, error)
        memory = None  # an out-of-memory event records the request it ran with
        if failure_type is FailureType.OUT_OF_MEMORY:
            memory = float(work.spec.options.get("memory") or 0) or None
        event = FailureEvent(
            timestamp=self._wall_clock(),
            failure_type=failure_type,
            details=f"{type(error).__name__}: {error}"[:500],
            task_id=work.task_id,
            worker_id=attempt.node_id,
            attempt=work.failures,
            memory_request=memory,
        )
        blame, decided = self._ledger.failed(event)
        if failure_type is FailureType.APPLICATION_ERROR and self._blame_user_error(attempt, error):
            blame = Blame.NODE
            decided = [dataclasses.replace(e, blame=blame.value) for e in decided]
        event = dataclasses.replace(event, blame=blame.value)
        work.events = [*(work.events or ()), event]
        self.failures_by_type[failure_type.value] += 1
        self._metrics.failure(failure_type.value)
        out = self._reports(work, decided)
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False, event if blame is Blame.NODE else None))
        if work.first_failure_at is None:
            work.first_failure_at = now
        if decision and self._cancelling:
            return [*out, *self._end_cancelled(work)]
        if decision:
            self.stats["retries"] += 1
            self._metrics.retry()
            if failure_type is not FailureType.APPLICATION_ERROR:
                # the node may be at fault: retry elsewhere (an application error is the
                # task's own, and the same node keeps its warm worker)
                work.avoid = work.avoid | {attempt.node_id}
            if failure_type is FailureType.OUT_OF_MEMORY:
                work.spec = self.memory.more_memory(work, attempt.node_id)
                self._feed_queued(work.kind)
            work.state = "backoff"
            heapq.heappush(self._timers, (now + decision.delay, next(self._seq), work))
            return out
        if failure_type is FailureType.APPLICATION_ERROR:
            return [*out, *self._end(work, "failed", error=error)]
        self._metrics.gave_up(failure_type.value)
        failed = TaskFailedError(
            f"{work.name} failed {work.failures} times; last: {failure_type.value}: "
            f"{error}. {decision.reason}",
            failure_type=failure_type,
            attempts=work.failures,
            events=work.events or (),
        )
        failed.__cause__ = error
        return [*out, *self._end(work, "failed", error=failed)]

    def _end(
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
        if work.state == "done":
            return []
        work.state = "done"
        self.stats[outcome] += 1
        if work.cohort is not None:
            self._stragglers.finished(work.kind, work.cohort, runtime)
            work.cohort = None
        out: list[Command] = []
        if work.failures:
            if on is not None:
                decided = self._ledger.succeeded(work.task_id, on.node_id)
            else:
                decided = self._ledger.finished(work.task_id)
            out.extend(self._reports(work, decided))
        if not work.started:
            work.future.cancel()
            return out
        out.append(Resolve(work.future, value=value, error=error))
        return out

    def _reports(self, work: Work, decided: list[FailureEvent]) -> list[Command]:
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

    # -- stragglers and hungry tasks -------------------------------------------------------

    def _twin_running(self, work: Work) -> bool:
        return self.inflight.has_twin(work)

    def _drop_twins(self, work: Work) -> list[Command]:
        """The work is done: cancel its other copy; its late result is dropped."""
        out: list[Command] = []
        for twin in self.inflight.twins(work):
            self.table.learn_lower_bound(twin.node_id, work.kind, twin.launched_at, self._clock())
            self._drop(twin)
            out.extend(self._cancel(twin))
            if twin.trial:
                out.append(ReleaseTrial(twin.node_id, False))
        return out

    def _speculate(self, now: float) -> list[Command]:
        """One backup on another node, in a free slot, for each straggling attempt."""
        out: list[Command] = []
        for attempt in self.inflight.candidates():  # first attempts that may get a backup
            work = attempt.work
            if attempt.group is not None:
                continue  # a batched member is short by construction: its batch has a timeout
            if not work.speculate or work.speculated or attempt.trial or work.cohort is None:
                continue
            threshold = work.cohort.threshold(self.config)
            if threshold is None or now - attempt.launched_at <= threshold:
                continue
            if self._queues.get(work.shape):
                continue  # first attempts come first
            if self.max_in_flight is not None and len(self.inflight) >= self.max_in_flight:
                break
            if self._stragglers.budget(self.table.free_slots(work.shape), self._backups) <= 0:
                break
            node_id = self.placement.backup_node(work, attempt.node_id, threshold)
            if node_id is None:
                continue
            out.append(self._start_copy(work, node_id, now, "speculated"))
        return out

    def _feed_queued(self, kind: str) -> None:
        """Queued calls of a callable that ran out of memory ask for what its retry got."""
        for shape, queue in list(self._queues.items()):
            moved = [w for w in queue if w.kind == kind and self.memory.feed(w)]
            if moved:
                self._queues[shape] = deque(w for w in queue if w.shape == shape)
                for work in moved:
                    self._queues.setdefault(work.shape, deque()).append(work)


def _is_pickling_error(error: BaseException) -> bool:
    """Ray could not pickle the call's arguments (or the callable)."""
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, pickle.PicklingError) or "pickl" in text or "serializ" in text
