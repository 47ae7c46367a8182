"""The executor's brain: a pure, single-threaded scheduler (no Ray, injected clock).

Events go in through one entry, ``handle(*events)`` (typed, in
:mod:`ray_ft.core.events`: submitted, attempt done, nodes changed, exclusions changed,
trial granted, tick, ...); commands come out (launch, cancel, resolve, report, acquire and
release trial leases). It owns the queues, the retry timer heap, the deadlines, capacity
and placement, fault attribution and trial leases, in rooms: its data and the primitives
that change it together are :class:`~ray_ft.core.state.SchedulerState`; how attempts and
calls end, :class:`~ray_ft.core.outcomes.Outcomes` (applying the verdicts of
``ray_ft.core.failure_rules``); backups and drain copies, :class:`~ray_ft.core.copies.Copies`.
This module holds the events and the dispatch.
The Ray loop (``ray_ft.runtime.loop``) holds its lock only to exchange events and commands,
and carries the commands out.

Placement (``ray_ft.core.placement``) adapts to how fast each node finishes work. A straggling
attempt gets one backup on another node in a free slot (``ray_ft.core.speculation``): the first
result wins. An out-of-memory retry asks for more memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
from collections.abc import Iterable, Mapping
from typing import Any, assert_never

from ray_ft.config import FTConfig
from ray_ft.core.autoscaling import NodeTypes
from ray_ft.core.batching import batchable
from ray_ft.core.commands import (
    AcquireTrial,
    Command,
    Exclusions,
    Launch,
    LaunchBatch,
    ReleaseTrial,
)
from ray_ft.core.copies import Copies
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
from ray_ft.core.inflight import InFlight
from ray_ft.core.outcomes import Outcomes
from ray_ft.core.state import NullMetrics, Outcome, SchedulerState
from ray_ft.core.work import Attempt, Shape, Work, WorkState
from ray_ft.failures import (
    FailureType,
    TaskTimeoutError,
)

__all__ = ["NullMetrics", "Outcome", "Scheduler"]

_STRAGGLER_CHECK_S = 0.1  # how often running attempts are checked for stragglers


class Scheduler:
    """Queues, timers, deadlines, capacity and attribution, over the node table and the
    placement, retry, memory and straggler policies: the events, and the dispatch.

    ``state`` holds the data and its primitives (``SchedulerState`` takes this
    constructor's arguments); ``outcomes`` ends attempts and calls; ``copies`` backs them up.
    """

    def __init__(self, config: FTConfig, **options: Any) -> None:
        self.state = SchedulerState(config, **options)
        self.outcomes = Outcomes(self.state)
        self.copies = Copies(self.state)

    # -- questions (the state answers) --------------------------------------------------

    @property
    def nodes(self) -> dict[str, dict[str, float]]:
        return self.state.nodes

    @property
    def inflight(self) -> InFlight:
        return self.state.inflight

    @property
    def idle(self) -> bool:
        return self.state.idle

    def summary(self) -> dict[str, Any]:
        return self.state.summary()

    def demand(self) -> dict[Shape, int]:
        return self.state.demand()

    def pending(self) -> int:
        return self.state.pending()

    def next_wakeup(self) -> float | None:
        return self.state.next_wakeup()

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
                return self._on_attempt_done(event)
            case Tick():
                return self._on_tick()
            case Submitted():
                return self._on_submitted(event.works)
            case LaunchFailed():
                return self._on_launch_failed(event.attempt_id, event.error)
            case BatchFailed():
                return self._on_batch_failed(event)
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
        st = self.state
        for work in works:
            st.stats["submitted"] += 1
            speculation = work.spec.speculation
            if speculation if speculation is not None else st.config.speculation:
                work.speculate = True
                work.cohort = st.stragglers.submitted(work.kind)
            if st.memory:
                st.memory.feed(work)
            st.queue(work, front=False)
        return self._dispatch(st.clock())

    def _on_attempt_done(self, done: AttemptDone) -> list[Command]:
        """An attempt's outcome. ``error`` is the user's own exception where there is one;
        ``placement`` marks Ray's 'cannot schedule there' (re-placed, charging nobody)."""
        st = self.state
        attempt = st.inflight.get(done.attempt_id)
        if attempt is None:
            return []  # abandoned, timed out or cancelled: a late result is dropped
        now = st.clock()
        st.drop(attempt)
        out: list[Command] = []
        work = attempt.work
        error = done.error
        if error is None:
            st.rates.finished(attempt.node_id, failed=False)
            runtime = st.learn(attempt, now)
            if work.speculated:  # the first result wins; its twin is cancelled and dropped
                out.extend(self.outcomes.drop_twins(work))
                st.stats["speculation_wins"] += attempt.backup
            if attempt.trial:
                out.append(ReleaseTrial(attempt.node_id, True))
            if work.first_failure_at is not None:
                st.metrics.recovered(now - work.first_failure_at)
            out.extend(
                st.end(work, Outcome.SUCCEEDED, value=done.value, runtime=runtime, on=attempt)
            )
        elif done.placement:
            out.extend(self.outcomes.placement_failed(attempt, error))
        else:
            out.extend(
                self.outcomes.failed(
                    attempt, error, done.failure_type or FailureType.APPLICATION_ERROR
                )
            )
        out.extend(self._dispatch(now))
        return out

    def _on_launch_failed(self, attempt_id: int, error: BaseException) -> list[Command]:
        """Ray refused the launch (the arguments do not pickle, an option is refused): the
        call fails at once; no other call is touched."""
        st = self.state
        attempt = st.inflight.get(attempt_id)
        if attempt is None:
            return []
        st.drop(attempt)
        out: list[Command] = []
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False))
        if attempt.work.speculated and st.twin_running(attempt.work):
            return out  # the first launch of these same arguments went through
        return [*out, *self.outcomes.refused(attempt.work, error)]

    def _on_aborted(self, attempt: Attempt, error: BaseException) -> list[Command]:
        """ray_ft itself failed while taking this attempt's outcome: end its call with
        ``error`` rather than leave it pending (the loop's last line of defence)."""
        st = self.state
        if st.inflight.get(attempt.attempt_id) is attempt:
            st.drop(attempt)
        out: list[Command] = []
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False))
        if attempt.work.future.done():
            return out
        return [*out, *self.outcomes.fail(attempt.work, error)]

    def _on_nodes_changed(self, nodes: Mapping[str, Mapping[str, float]]) -> list[Command]:
        """Ray's alive nodes and their resources; work on vanished nodes is rerun."""
        st = self.state
        st.retired &= set(nodes)  # a retired worker the table no longer lists is gone
        incoming = {n: r for n, r in nodes.items() if n not in st.retired}
        out: list[Command] = []
        for node_id in [n for n in st.nodes if n not in incoming]:
            if node_id in st.draining:  # it left on notice: nobody's fault
                out.extend(
                    self.outcomes.abandon_node(node_id, "was drained (preempted)", preempted=True)
                )
            else:
                out.extend(self.outcomes.abandon_node(node_id, "is dead (Ray)"))
            self.outcomes.forget_node(node_id)
        st.table.set_nodes(incoming)
        out.extend(self._dispatch(st.clock()))
        return out

    def _on_worker_lost(self, node_id: str, reason: str) -> list[Command]:
        """A worker (an actor) is gone for good: it takes no more work, even if a stale
        node table still lists it, and its attempts rerun elsewhere, charging nobody."""
        return self.outcomes.retire(node_id, reason)

    def _on_exclusions_changed(self, snapshot: Exclusions) -> list[Command]:
        """A new manager snapshot: failed or dead nodes lose their attempts; HALF_OPEN
        nodes get a trial lease request when queued work could use one."""
        st = self.state
        before = st.exclusions.failed | st.exclusions.dead
        st.exclusions = snapshot
        unusable = snapshot.excluded | {n for n, _ in snapshot.half_open}
        st.table.set_unusable(unusable | st.draining.deadlines.keys())
        st.table.set_degraded(snapshot.degraded - unusable)  # placed last, not excluded
        out: list[Command] = []
        for node_id in (snapshot.failed | snapshot.dead) - before:
            out.extend(self.outcomes.abandon_node(node_id, "was declared failed by the manager"))
        st.trials.void_except(n for n, _ in snapshot.half_open)
        out.extend(self._dispatch(st.clock()))
        return out

    def _on_node_types_changed(self, types: NodeTypes | None) -> list[Command]:
        """The worker types the cluster's autoscaler can launch (None: no autoscaler, or
        unknown): queued work that fits none of them fails at once."""
        st = self.state
        st.placement.node_types = types
        return self._dispatch(st.clock())

    def _on_draining_changed(self, deadlines: Mapping[str, float]) -> list[Command]:
        """Nodes with a drain notice and their deadlines (this clock; 0: none): they take
        no new work, and attempts that would outlive the deadline get a copy elsewhere."""
        st = self.state
        now = st.clock()
        st.drain_listed = dict(deadlines)
        self._follow_drains(now)
        out = self.copies.for_draining(now)
        out.extend(self._dispatch(now))
        return out

    def _follow_drains(self, now: float) -> None:
        """The manager's last drain list into ``draining`` (an undone drain leaves after a
        grace); the node table's unusable set follows."""
        st = self.state
        before = set(st.draining.deadlines)
        st.draining.update(st.drain_listed, now)
        if set(st.draining.deadlines) != before:
            excl = st.exclusions
            unusable = excl.excluded | {n for n, _ in excl.half_open}
            st.table.set_unusable(unusable | st.draining.deadlines.keys())

    def _on_trial_granted(self, node_id: str, granted: bool) -> list[Command]:
        """The manager's answer to an AcquireTrial."""
        st = self.state
        if not granted:
            st.trials.answered(node_id, False)
            return []
        half_open = dict(st.exclusions.half_open)
        if node_id not in half_open or node_id not in st.nodes or not st.queued():
            st.trials.answered(node_id, False)
            return [ReleaseTrial(node_id, False)]  # nothing (or nowhere) to try: give it back
        st.trials.answered(node_id, True)
        return self._dispatch(st.clock())

    def _on_tick(self) -> list[Command]:
        """Fire due retry timers and deadlines, dispatch, fail work with no capacity."""
        st = self.state
        now = st.clock()
        out: list[Command] = []
        while st.timers and st.timers[0][0] <= now:
            _, _, work = heapq.heappop(st.timers)
            st.queue(work)
        for attempt_id in st.inflight.due(now):
            attempt = st.inflight.get(attempt_id)
            if attempt is not None and attempt.group is not None and attempt.group.live > 1:
                st.stats["timeouts"] += 1
                waited = (attempt.deadline or now) - attempt.launched_at
                error = TaskTimeoutError(waited, attempt.work.name)
                out.extend(self.outcomes.split(attempt.group, error, cancel=True))
            elif attempt is not None:
                st.stats["timeouts"] += 1
                st.drop(attempt)
                out.extend(self.outcomes.cancel(attempt))
                timeout = attempt.work.timeout or 0.0
                error = TaskTimeoutError(timeout, attempt.work.name)
                out.extend(self.outcomes.failed(attempt, error, FailureType.TASK_TIMEOUT))
        if st.draining:
            self._follow_drains(now)
            out.extend(self.copies.for_draining(now))
        out.extend(self._dispatch(now))
        if st.speculative and now >= st.straggler_check_at:
            st.straggler_check_at = now + _STRAGGLER_CHECK_S
            out.extend(self.copies.for_stragglers(now))
        return out

    def _on_cancel_queued(self) -> list[Command]:
        """shutdown(cancel_futures=True): every call not running now ends at once, those
        waiting out a retry delay included; running attempts finish, and one that fails
        from now on ends instead of being retried."""
        st = self.state
        st.cancelling = True
        works = st.take_waiting()
        out: list[Command] = []
        for work in works:
            out.extend(self.outcomes.end_cancelled(work))
        return [*out, *self._on_went_idle()]

    def _on_gave_up(self, works: Iterable[Work]) -> list[Command]:
        """The caller will not take these calls' results (their map() iterator was closed
        or timed out): a queued call is cancelled, a running one's attempts are stopped,
        and it ends with CancelledError; nobody is charged."""
        st = self.state
        out: list[Command] = []
        waiting = False  # some call waits out a retry delay: its timer goes too
        for work in works:
            if work.future.done() or work.given_up:
                continue
            if not work.started:
                work.future.cancel()  # its queue entry is consumed by the next dispatch
                continue
            work.given_up = True
            attempts = st.inflight.twins(work)
            waiting = waiting or not attempts
            for attempt in attempts:
                st.drop(attempt)
                out.extend(self.outcomes.cancel(attempt))
                if attempt.trial:
                    out.append(ReleaseTrial(attempt.node_id, False))
            msg = f"{work.name} was given up: the map() iterator waiting for it was closed"
            out.extend(st.end(work, Outcome.CANCELLED, error=cf.CancelledError(msg)))
        if waiting:  # one pass for the whole set (a closed map gives up many at once)
            st.timers = [t for t in st.timers if not t[2].given_up]
            heapq.heapify(st.timers)
        return [*out, *self._dispatch(st.clock())]

    def _on_workers_broken(self, error: BaseException) -> list[Command]:
        """Fail every queued or waiting call with ``error`` (the workers cannot start)."""
        st = self.state
        out: list[Command] = []
        works = st.take_waiting()
        for work in works:
            if not work.started and not work.future.set_running_or_notify_cancel():
                continue
            work.started = True
            out.extend(st.end(work, Outcome.FAILED, error=error))
        return out

    def _on_went_idle(self) -> list[Command]:
        """Give back every trial lease held but not used (shutdown, or an idle executor)."""
        return [ReleaseTrial(node_id, False) for node_id in self.state.trials.release_all()]

    # -- placement ------------------------------------------------------------------

    def _dispatch(self, now: float) -> list[Command]:
        st = self.state
        out: list[Command] = []
        for shape, queue in st.queues.items():
            stranded: list[Work] = []
            while queue:
                if st.cancelling:
                    out.extend(self.outcomes.end_cancelled(queue.popleft()))
                    continue
                if st.max_in_flight is not None and len(st.inflight) >= st.max_in_flight:
                    break
                work = queue[0]
                if work.state == WorkState.DONE:  # ended elsewhere (a twin won, given up, aborted)
                    queue.popleft()
                    continue
                picked = st.placement.pick(work, len(queue))
                if picked is None:
                    if not work.unplaceable or st.table.could_run(work):
                        break  # no room now: the queue waits in order
                    stranded.append(queue.popleft())  # only nodes Ray refused fit it
                    continue
                queue.popleft()
                if not work.started:
                    if not work.future.set_running_or_notify_cancel():
                        out.extend(st.end(work, Outcome.CANCELLED))
                        # the pick took the node's heap entry: give it back, or the node
                        # would get no more of this work until its next event
                        st.table.unpick(picked[0], work.shape, work.kind)
                        continue  # cancelled while queued: consumed, nothing to run
                    work.started = True
                if st.batching and not picked[1] and batchable(work):
                    members = st.batch_members(work, queue, picked[0])
                    if len(members) > 1:
                        out.append(LaunchBatch(st.start_group(members, picked[0], now)))
                        continue
                out.append(Launch(st.start(work, picked[0], picked[1], now)))
            out.extend(self.outcomes.check_capacity(shape, queue, now))
            if stranded:
                out.extend(self.outcomes.strand(stranded, queue, now))
        for shape in [s for s, q in st.queues.items() if not q]:
            del st.queues[shape]  # a shape seen once keeps no empty queue
        out.extend(self._ask_for_trials())
        return out

    def _ask_for_trials(self) -> list[Command]:
        """Lease requests for HALF_OPEN nodes, only while work is queued that could use them."""
        st = self.state
        if not st.exclusions.half_open or not st.queued():
            return []
        return [AcquireTrial(n) for n in st.trials.to_ask(st.exclusions.half_open)]

    # -- batches --------------------------------------------------------------------

    def _on_batch_failed(self, failed: BatchFailed) -> list[Command]:
        """A batch died as a whole (its worker, its node, Ray refused it): its members are
        split in halves and run again, charging nobody, so a poison member ends up alone
        and fails by itself; a lone member's failure is an ordinary one."""
        st = self.state
        live = [a for a in (st.inflight.get(i) for i in failed.attempt_ids) if a is not None]
        if not live:
            return []
        if len(live) == 1:
            if failed.launch:
                return self._on_launch_failed(live[0].attempt_id, failed.error)
            return self._on_attempt_done(
                AttemptDone(
                    live[0].attempt_id,
                    error=failed.error,
                    failure_type=failed.failure_type,
                    placement=failed.placement,
                )
            )
        assert live[0].group is not None
        out = self.outcomes.split(live[0].group, failed.error, cancel=False)
        out.extend(self._dispatch(st.clock()))
        return out

    def _on_batch_unrun(self, attempt_ids: Iterable[int], ran: int) -> list[Command]:
        """Members a batch did not run (its results filled its memory budget): first in
        line again, uncharged, in batches no bigger than the part that ran."""
        st = self.state
        live = [a for a in (st.inflight.get(i) for i in attempt_ids) if a is not None]
        st.stats["batch_unrun"] += len(live)
        for attempt in live:
            st.drop(attempt)
        for attempt in reversed(live):
            attempt.work.batch_cap = max(1, ran)
            st.queue(attempt.work)
        return self._dispatch(st.clock())
