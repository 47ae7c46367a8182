"""How an attempt's end is judged: retry, re-place, rerun elsewhere or end the call (pure).

The scheduler's failure rules, blamed by where the error was raised: the user's exception is
the task's; Ray's word on the infrastructure may count against a node (``ray_ft.core.
attribution``); a node that left, or that ray_ft gave up on, charges nobody. Each rule
changes the state only through :class:`~ray_ft.core.state.SchedulerState`'s primitives.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import pickle
from collections import deque

from ray_ft.core.attribution import Blame
from ray_ft.core.commands import (
    Cancel,
    CapacityError,
    Command,
    ReleaseTrial,
    Report,
)
from ray_ft.core.failure_rules import Next
from ray_ft.core.state import Outcome, SchedulerState
from ray_ft.core.work import Attempt, Group, Shape, Work, WorkState
from ray_ft.failures import (
    FailureEvent,
    FailureType,
    NodeFailedError,
    TaskFailedError,
    user_error_kind,
)

__all__ = ["Outcomes"]


class Outcomes:
    """How attempts and calls end, applied to one scheduler's state through its
    primitives: the failure rules' verdicts, reruns elsewhere, cancels, batch splits."""

    __slots__ = ("state",)

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def fail(self, work: Work, error: BaseException) -> list[Command]:
        """End a call with ``error`` (its undecided failures charge nobody)."""
        return self.state.end(work, Outcome.FAILED, error=error)

    def capacity_failed(self, work: Work, msg: str) -> list[Command]:
        if not work.started and not work.future.set_running_or_notify_cancel():
            return []  # cancelled while it waited
        work.started = True
        return self.fail(work, CapacityError(msg))

    def end_cancelled(self, work: Work) -> list[Command]:
        """End a call that will not run again: a pending future is cancelled, a running
        one (it waited to retry, or to be re-placed) ends with CancelledError."""
        msg = (
            f"{work.name} was waiting to run again when the executor was shut down with "
            "cancel_futures=True"
        )
        return self.state.end(work, Outcome.CANCELLED, error=cf.CancelledError(msg))

    def check_capacity(self, shape: Shape, queue: deque[Work], now: float) -> list[Command]:
        """Fail the shape's queued calls with CapacityError once no node could ever run
        them (``ray_ft.core.placement``)."""
        msg = self.state.placement.starved(shape, bool(queue), now)
        out: list[Command] = []
        while msg is not None and queue:
            out.extend(self.capacity_failed(queue.popleft(), msg))
        return out

    def strand(self, works: list[Work], queue: deque[Work], now: float) -> list[Command]:
        """Calls no usable node can take (Ray refused the others) wait aside, not ahead of
        the queue, and fail with CapacityError after ``capacity_wait_timeout``."""
        out: list[Command] = []
        for work in reversed(works):
            msg = self.state.placement.stranded(work, now)
            if msg is None:
                queue.appendleft(work)  # tried first again once nodes change
            else:
                out.extend(self.capacity_failed(work, msg))
        return out

    def refused(self, work: Work, error: BaseException) -> list[Command]:
        """Ray refused to launch the call: it fails at once, with what to pass instead."""
        name = work.name
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
        return self.fail(work, failure)

    def failed(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> list[Command]:
        """Apply the failure rules' verdict (``ray_ft.core.failure_rules``) to an attempt
        that failed; its blame is decided by where the error was raised."""
        st = self.state
        work = attempt.work
        verdict = st.rules.judge(
            failure_type,
            error,
            failures=work.failures,
            draining=attempt.node_id in st.draining,
            twin_running=work.speculated and st.twin_running(work),
            cancelling=st.cancelling,
        )
        if verdict.next is Next.RERUN:
            return self.node_gone(attempt, error, preempted=True)
        if verdict.next is Next.RECORD:
            st.stats["speculation_failures"] += 1
            return self.on_record(attempt, error, failure_type, Blame.NONE)
        now = st.clock()
        work.failures += 1
        out = self._charge(attempt, error, failure_type)
        if work.first_failure_at is None:
            work.first_failure_at = now
        if verdict.next is Next.CANCEL:
            return [*out, *self.end_cancelled(work)]
        if verdict.next is Next.RETRY:
            st.stats["retries"] += 1
            st.metrics.retry()
            if verdict.elsewhere:
                work.avoid = work.avoid | {attempt.node_id}
            if verdict.more_memory:
                work.spec = st.memory.more_memory(work, attempt.node_id)
                self.feed_queued(work.kind)
            st.wait_out(work, now + verdict.delay)
            return out
        if verdict.next is Next.FAIL:
            return [*out, *st.end(work, Outcome.FAILED, error=error)]
        st.metrics.gave_up(failure_type.value)
        out.extend(st.settle(work))  # the error names its events with their blame
        failed = TaskFailedError(
            f"{work.name} failed {work.failures} times; last: {failure_type.value}: "
            f"{error}. {verdict.reason}",
            failure_type=failure_type,
            attempts=work.failures,
            events=work.events or (),
        )
        failed.__cause__ = error
        return [*out, *st.end(work, Outcome.FAILED, error=failed)]

    def _charge(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> list[Command]:
        """Put a counted failure on the call's record with its blame, and report the
        failures whose blame is now known (a trial's node learns its outcome)."""
        st = self.state
        work = attempt.work
        memory = None  # an out-of-memory event records the request it ran with
        if failure_type is FailureType.OUT_OF_MEMORY:
            memory = float(work.spec.options.get("memory") or 0) or None
        event = FailureEvent(
            timestamp=st.wall_clock(),
            failure_type=failure_type,
            details=f"{type(error).__name__}: {error}"[:500],
            task_id=work.task_id,
            worker_id=attempt.node_id,
            attempt=work.failures,
            memory_request=memory,
        )
        blame, decided = st.ledger.failed(event)
        if failure_type is FailureType.APPLICATION_ERROR and self._blame_user_error(attempt, error):
            blame = Blame.NODE
            decided = [dataclasses.replace(e, blame=blame.value) for e in decided]
        event = dataclasses.replace(event, blame=blame.value)
        work.events = [*(work.events or ()), event]
        st.failures_by_type[failure_type.value] += 1
        st.metrics.failure(failure_type.value)
        out = st.reports(work, decided)
        if attempt.trial:
            out.append(ReleaseTrial(attempt.node_id, False, event if blame is Blame.NODE else None))
        return out

    def placement_failed(self, attempt: Attempt, error: BaseException) -> list[Command]:
        """Ray could not schedule a pinned attempt there: re-place it, charging nobody.

        On a node Ray has dropped this is a node death seen early; on a live node the
        request does not fit there. Either way it is no retry; a request that fits nowhere
        fails with CapacityError after a few placements.
        """
        st = self.state
        work = attempt.work
        work.placement_failures += 1
        work.unplaceable = work.unplaceable | {attempt.node_id}
        if work.speculated and st.twin_running(work):
            return self.on_record(attempt, error, FailureType.APPLICATION_ERROR, Blame.PLACEMENT)
        if not st.table.could_run(work):
            msg = (
                f"Ray could not schedule {work.name} (needs {work.shape.describe()}) on any "
                f"of the {len(work.unplaceable)} nodes that seemed to fit: {error}; lower the "
                "request or add nodes that can meet it"
            )
            return self.capacity_failed(work, msg)
        st.stats["replaced"] += 1
        return self.requeue(attempt, error, FailureType.APPLICATION_ERROR, Blame.PLACEMENT)

    def requeue(
        self, attempt: Attempt, error: BaseException, kind: FailureType, blame: Blame
    ) -> list[Command]:
        """Run the call again elsewhere, first in line, charging no retry; the failure is
        put on record as ``kind`` with ``blame``."""
        st = self.state
        work = attempt.work
        out = self.on_record(attempt, error, kind, blame)
        work.avoid = work.avoid | {attempt.node_id}
        if not (work.speculated and st.twin_running(work)):
            st.queue(work)
        return out

    def node_gone(
        self, attempt: Attempt, error: BaseException, *, preempted: bool
    ) -> list[Command]:
        """The attempt's node went (dead, or drained: a preemption): nobody's fault."""
        st = self.state
        if preempted:
            st.stats["preempted"] += 1
            st.failures_by_type["preempted"] += 1
        else:
            st.stats["abandoned"] += 1
        return self.requeue(attempt, error, FailureType.NODE_DIED, Blame.NONE)

    def abandon_node(self, node_id: str, reason: str, *, preempted: bool = False) -> list[Command]:
        """Rerun a failed (or drained) node's attempts elsewhere at once: ray_ft's own
        verdict, so it charges nobody (neither the node's breaker nor the task's retries)."""
        st = self.state
        out: list[Command] = []
        for attempt in st.inflight.on_node(node_id):
            st.drop(attempt)
            out.append(Cancel(attempt))
            error = NodeFailedError(node_id, reason)
            out.extend(self.node_gone(attempt, error, preempted=preempted))
        return out

    def on_record(
        self, attempt: Attempt, error: BaseException, kind: FailureType, blame: Blame
    ) -> list[Command]:
        """A failure put on record that charges neither the node nor the task's retries."""
        event = FailureEvent(
            timestamp=self.state.wall_clock(),
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

    def _blame_user_error(self, attempt: Attempt, error: BaseException) -> bool:
        """The user's own exception: count its kind; True when its node's user failures
        stand far above its peers' (the only way it counts against a node)."""
        st = self.state
        kind = user_error_kind(error)
        if kind is not None:
            st.user_errors[kind] += 1
        return st.rates.finished(attempt.node_id, failed=True)

    def cancel(self, attempt: Attempt) -> list[Command]:
        """Cancel a dropped attempt; where that kills its worker (an actor), the worker
        takes no more work and its other attempts rerun elsewhere."""
        out: list[Command] = [Cancel(attempt)]
        if self.state.cancel_kills_worker:
            out.extend(self.retire(attempt.node_id, "had its worker stopped"))
        return out

    def retire(self, node_id: str, reason: str) -> list[Command]:
        """Take a worker (an actor) out for good: no more work for it, even if a stale
        node table still lists it; its attempts rerun elsewhere, charging nobody."""
        st = self.state
        if node_id not in st.nodes:
            return []
        st.retired.add(node_id)
        out = self.abandon_node(node_id, reason)
        self.forget_node(node_id)
        st.table.remove(node_id)
        return out

    def forget_node(self, node_id: str) -> None:
        """A node left: the scheduler's own per-node tables drop it (the table's too)."""
        st = self.state
        st.rates.forget(node_id)
        st.draining.forget(node_id)
        st.drain_listed.pop(node_id, None)
        st.inflight.forget_node(node_id)
        st.trials.forget(node_id)

    def drop_twins(self, work: Work) -> list[Command]:
        """The work is done: cancel its other copy; its late result is dropped."""
        st = self.state
        out: list[Command] = []
        for twin in st.inflight.twins(work):
            st.table.learn_lower_bound(twin.node_id, work.kind, twin.launched_at, st.clock())
            st.drop(twin)
            out.extend(self.cancel(twin))
            if twin.trial:
                out.append(ReleaseTrial(twin.node_id, False))
        return out

    def split(self, group: Group, error: BaseException, *, cancel: bool) -> list[Command]:
        """Run a dead or timed-out batch's members again in two halves, first in line."""
        st = self.state
        live = [a for a in group.attempts if st.inflight.get(a.attempt_id) is a]
        st.stats["batch_splits"] += 1
        half = (len(live) + 1) // 2
        out: list[Command] = []
        for attempt in live:
            st.drop(attempt)
            if cancel:
                out.append(Cancel(attempt))
        out.extend(self.on_record(live[0], error, FailureType.APPLICATION_ERROR, Blame.NONE))
        for attempt in reversed(live):
            attempt.work.batch_cap = half
            st.queue(attempt.work)
        return out

    def feed_queued(self, kind: str) -> None:
        """Queued calls of a callable that ran out of memory ask for what its retry got.
        A call that ended in line (given up, cancelled) keeps its entry, for the next
        dispatch to drop: moving it would put it back in line."""
        st = self.state
        for shape, queue in list(st.queues.items()):
            moved = [
                w
                for w in queue
                if w.kind == kind and w.state is not WorkState.DONE and st.memory.feed(w)
            ]
            if moved:
                st.queues[shape] = deque(w for w in queue if w.shape == shape)
                for work in moved:
                    st.queue(work, front=False)


def _is_pickling_error(error: BaseException) -> bool:
    """Ray could not pickle the call's arguments (or the callable)."""
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, pickle.PicklingError) or "pickl" in text or "serializ" in text
