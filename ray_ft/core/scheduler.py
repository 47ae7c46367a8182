"""The executor's brain: a pure, single-threaded scheduler (no Ray, injected clock).

Events go in through one entry, ``handle(*events)`` (typed, in
:mod:`ray_ft.core.events`: submitted, attempt done, nodes changed, exclusions changed,
trial granted, tick, ...); commands come out (launch, cancel, resolve, report, acquire and
release trial leases). It owns the queues, the retry timer heap, the deadlines, capacity
and placement, fault attribution and trial leases: its state and primitives are
:class:`~ray_ft.core.state.SchedulerState`, its failure rules
:class:`~ray_ft.core.outcomes.Outcomes`, and this module holds the events and the dispatch.
The Ray loop (``ray_ft.runtime.loop``) holds its lock only to exchange events and commands,
and carries the commands out.

Placement (``ray_ft.core.placement``) adapts to how fast each node finishes work. A straggling
attempt gets one backup on another node in a free slot (``ray_ft.core.speculation``): the first
result wins. An out-of-memory retry asks for more memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, assert_never

from ray_ft.core.autoscaling import NodeTypes
from ray_ft.core.batching import batch_size, batchable, take_members
from ray_ft.core.commands import (
    AcquireTrial,
    Command,
    Exclusions,
    Launch,
    LaunchBatch,
    ReleaseTrial,
)
from ray_ft.core.events import (
    Aborted,
    AttemptDone,
    BatchFailed,
    BatchUnrun,
    CancelQueued,
    DrainingChanged,
    Event,
    ExclusionsChanged,
    GaveUp,
    LaunchFailed,
    NodesChanged,
    NodeTypesChanged,
    Submitted,
    Tick,
    TrialGranted,
    WentIdle,
    WorkerLost,
    WorkersBroken,
)
from ray_ft.core.outcomes import Outcomes
from ray_ft.core.state import NullMetrics, Outcome
from ray_ft.core.work import Attempt, Group, Shape, Work, WorkState
from ray_ft.failures import (
    FailureType,
    TaskTimeoutError,
)

__all__ = ["NullMetrics", "Outcome", "Scheduler"]

_STRAGGLER_CHECK_S = 0.1  # how often running attempts are checked for stragglers


class Scheduler(Outcomes):
    """Queues, timers, deadlines, capacity and attribution, over the node table and the
    placement, retry, memory and straggler policies: the events, and the dispatch."""

    # -- the one entry -------------------------------------------------------------------

    def handle(self, *events: Event) -> list[Command]:
        """Take events in order; the commands they call for, in order."""
        out: list[Command] = []
        for event in events:
            out.extend(self._handle(event))
        return out

    def _handle(self, event: Event) -> list[Command]:
        match event:
            case AttemptDone():  # the hot path first
                return self._on_attempt_done(
                    event.attempt_id,
                    value=event.value,
                    error=event.error,
                    failure_type=event.failure_type,
                    placement=event.placement,
                )
            case Tick():
                return self._on_tick()
            case Submitted():
                return self._on_submitted(event.works)
            case LaunchFailed():
                return self._on_launch_failed(event.attempt_id, event.error)
            case BatchFailed():
                return self._on_batch_failed(
                    event.attempt_ids,
                    event.error,
                    event.failure_type,
                    placement=event.placement,
                    launch=event.launch,
                )
            case BatchUnrun():
                return self._on_batch_unrun(event.attempt_ids, event.ran)
            case Aborted():
                return self._on_aborted(event.attempt, event.error)
            case NodesChanged():
                return self._on_nodes_changed(event.nodes)
            case WorkerLost():
                return self._on_worker_lost(event.node_id, event.reason)
            case ExclusionsChanged():
                return self._on_exclusions_changed(event.snapshot)
            case NodeTypesChanged():
                return self._on_node_types_changed(event.types)
            case DrainingChanged():
                return self._on_draining_changed(event.deadlines)
            case TrialGranted():
                return self._on_trial_granted(event.node_id, event.granted)
            case WorkersBroken():
                return self._on_workers_broken(event.error)
            case GaveUp():
                return self._on_gave_up(event.works)
            case CancelQueued():
                return self._on_cancel_queued()
            case WentIdle():
                return self._on_went_idle()
            case _:
                assert_never(event)

    # -- the events ----------------------------------------------------------------------

    def _on_submitted(self, works: Iterable[Work]) -> list[Command]:
        """New calls (a map): queue them all, then launch where nodes have room."""
        for work in works:
            self.stats["submitted"] += 1
            speculation = work.spec.speculation
            if speculation if speculation is not None else self.config.speculation:
                work.speculate = True
                work.cohort = self._stragglers.submitted(work.kind)
            if self.memory:
                self.memory.feed(work)
            self._queue(work, front=False)
        return self._dispatch(self._clock())

    def _on_attempt_done(
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
            out.extend(self._end(work, Outcome.SUCCEEDED, value=value, runtime=runtime, on=attempt))
        elif placement:
            out.extend(self._placement_failed(attempt, error))
        else:
            out.extend(self._failed(attempt, error, failure_type or FailureType.APPLICATION_ERROR))
        out.extend(self._dispatch(now))
        return out

    def _on_launch_failed(self, attempt_id: int, error: BaseException) -> list[Command]:
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
        return [*out, *self._refused(attempt.work, error)]

    def _on_aborted(self, attempt: Attempt, error: BaseException) -> list[Command]:
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

    def _on_nodes_changed(self, nodes: Mapping[str, Mapping[str, float]]) -> list[Command]:
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

    def _on_worker_lost(self, node_id: str, reason: str) -> list[Command]:
        """A worker (an actor) is gone for good: it takes no more work, even if a stale
        node table still lists it, and its attempts rerun elsewhere, charging nobody."""
        return self._retire(node_id, reason)

    def _on_exclusions_changed(self, snapshot: Exclusions) -> list[Command]:
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

    def _on_node_types_changed(self, types: NodeTypes | None) -> list[Command]:
        """The worker types the cluster's autoscaler can launch (None: no autoscaler, or
        unknown): queued work that fits none of them fails at once."""
        self.placement.node_types = types
        return self._dispatch(self._clock())

    def _on_draining_changed(self, deadlines: Mapping[str, float]) -> list[Command]:
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
                pace = self.table.paces.get(node_id, work.kind)
                if not self.draining.outlives(node_id, attempt.launched_at, pace, now):
                    continue
                if self.max_in_flight is not None and len(self.inflight) >= self.max_in_flight:
                    return out
                target = self.placement.backup_node(work, node_id, float("inf"))
                if target is None:
                    continue
                out.append(self._start_copy(work, target, now, "preemption_copies"))
        return out

    def _on_trial_granted(self, node_id: str, granted: bool) -> list[Command]:
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

    def _on_tick(self) -> list[Command]:
        """Fire due retry timers and deadlines, dispatch, fail work with no capacity."""
        now = self._clock()
        out: list[Command] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, work = heapq.heappop(self._timers)
            self._queue(work)
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

    def _on_cancel_queued(self) -> list[Command]:
        """shutdown(cancel_futures=True): every call not running now ends at once, those
        waiting out a retry delay included; running attempts finish, and one that fails
        from now on ends instead of being retried."""
        self._cancelling = True
        works = self._take_waiting()
        out: list[Command] = []
        for work in works:
            out.extend(self._end_cancelled(work))
        return [*out, *self._on_went_idle()]

    def _on_gave_up(self, works: Iterable[Work]) -> list[Command]:
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
            out.extend(self._end(work, Outcome.CANCELLED, error=cf.CancelledError(msg)))
        if waiting:  # one pass for the whole set (a closed map gives up many at once)
            self._timers = [t for t in self._timers if not t[2].given_up]
            heapq.heapify(self._timers)
        return [*out, *self._dispatch(self._clock())]

    def _on_workers_broken(self, error: BaseException) -> list[Command]:
        """Fail every queued or waiting call with ``error`` (the workers cannot start)."""
        out: list[Command] = []
        works = self._take_waiting()
        for work in works:
            if not work.started and not work.future.set_running_or_notify_cancel():
                continue
            work.started = True
            out.extend(self._end(work, Outcome.FAILED, error=error))
        return out

    def _on_went_idle(self) -> list[Command]:
        """Give back every trial lease held but not used (shutdown, or an idle executor)."""
        return [ReleaseTrial(node_id, False) for node_id in self.trials.release_all()]

    # -- placement ------------------------------------------------------------------

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
                if work.state == WorkState.DONE:  # ended elsewhere (a twin won, given up, aborted)
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
                        out.extend(self._end(work, Outcome.CANCELLED))
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

    def _ask_for_trials(self) -> list[Command]:
        """Lease requests for HALF_OPEN nodes, only while work is queued that could use them."""
        if not self.exclusions.half_open or not self._queued():
            return []
        return [AcquireTrial(n) for n in self.trials.to_ask(self.exclusions.half_open)]

    # -- batches --------------------------------------------------------------------

    def _on_batch_failed(
        self,
        attempt_ids: Iterable[int],
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
                return self._on_launch_failed(live[0].attempt_id, error)
            return self._on_attempt_done(
                live[0].attempt_id, error=error, failure_type=failure_type, placement=placement
            )
        assert live[0].group is not None
        out = self._split(live[0].group, error, cancel=False)
        out.extend(self._dispatch(self._clock()))
        return out

    def _on_batch_unrun(self, attempt_ids: Iterable[int], ran: int) -> list[Command]:
        """Members a batch did not run (its results filled its memory budget): first in
        line again, uncharged, in batches no bigger than the part that ran."""
        live = [a for a in (self.inflight.get(i) for i in attempt_ids) if a is not None]
        self.stats["batch_unrun"] += len(live)
        for attempt in live:
            self._drop(attempt)
        for attempt in reversed(live):
            attempt.work.batch_cap = max(1, ran)
            self._queue(attempt.work)
        return self._dispatch(self._clock())

    def _batch_members(self, head: Work, queue: deque[Work], node_id: str) -> list[Work]:
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
            self._end(work, Outcome.CANCELLED)  # nothing to say: cancelled while queued, or ended
        return members

    def _start_group(self, members: list[Work], node_id: str, now: float) -> tuple[Attempt, ...]:
        group = Group([], live=len(members))
        pace = self.table.paces.get(node_id, members[0].kind)
        if pace is not None:
            group.expected = pace * len(members)
        for work in members:
            self._start(work, node_id, False, now, group)
        self.stats["batches"] += 1
        self.stats["batched_calls"] += len(members)
        return tuple(group.attempts)

    # -- stragglers -----------------------------------------------------------------

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
