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
from ray_ft.core.work import Attempt, Group, Work
from ray_ft.failures import (
    FailureEvent,
    FailureType,
    NodeFailedError,
    TaskFailedError,
    user_error_kind,
)

__all__ = ["Outcomes"]


class Outcomes(SchedulerState):
    """The scheduler's state with its failure rules (the events are the Scheduler's)."""

    def _fail(self, work: Work, error: BaseException) -> list[Command]:
        """End a call with ``error`` (its undecided failures charge nobody)."""
        return self._end(work, Outcome.FAILED, error=error)

    def _capacity_failed(self, work: Work, msg: str) -> list[Command]:
        if not work.started and not work.future.set_running_or_notify_cancel():
            return []  # cancelled while it waited
        work.started = True
        return self._fail(work, CapacityError(msg))

    def _end_cancelled(self, work: Work) -> list[Command]:
        """End a call that will not run again: a pending future is cancelled, a running
        one (it waited to retry, or to be re-placed) ends with CancelledError."""
        msg = (
            f"{work.name} was waiting to run again when the executor was shut down with "
            "cancel_futures=True"
        )
        return self._end(work, Outcome.CANCELLED, error=cf.CancelledError(msg))

    def _refused(self, work: Work, error: BaseException) -> list[Command]:
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
        return self._fail(work, failure)

    def _failed(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> list[Command]:
        """Apply the failure rules' verdict (``ray_ft.core.failure_rules``) to an attempt
        that failed; its blame is decided by where the error was raised."""
        work = attempt.work
        verdict = self.rules.judge(
            failure_type,
            error,
            failures=work.failures,
            draining=attempt.node_id in self.draining,
            twin_running=work.speculated and self._twin_running(work),
            cancelling=self._cancelling,
        )
        if verdict.next is Next.RERUN:
            return self._node_gone(attempt, error, preempted=True)
        if verdict.next is Next.RECORD:
            self.stats["speculation_failures"] += 1
            return self._on_record(attempt, error, failure_type, Blame.NONE)
        now = self._clock()
        work.failures += 1
        out = self._charge(attempt, error, failure_type)
        if work.first_failure_at is None:
            work.first_failure_at = now
        if verdict.next is Next.CANCEL:
            return [*out, *self._end_cancelled(work)]
        if verdict.next is Next.RETRY:
            self.stats["retries"] += 1
            self._metrics.retry()
            if verdict.elsewhere:
                work.avoid = work.avoid | {attempt.node_id}
            if verdict.more_memory:
                work.spec = self.memory.more_memory(work, attempt.node_id)
                self._feed_queued(work.kind)
            self._wait_out(work, now + verdict.delay)
            return out
        if verdict.next is Next.FAIL:
            return [*out, *self._end(work, Outcome.FAILED, error=error)]
        self._metrics.gave_up(failure_type.value)
        out.extend(self._settle(work))  # the error names its events with their blame
        failed = TaskFailedError(
            f"{work.name} failed {work.failures} times; last: {failure_type.value}: "
            f"{error}. {verdict.reason}",
            failure_type=failure_type,
            attempts=work.failures,
            events=work.events or (),
        )
        failed.__cause__ = error
        return [*out, *self._end(work, Outcome.FAILED, error=failed)]

    def _charge(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> list[Command]:
        """Put a counted failure on the call's record with its blame, and report the
        failures whose blame is now known (a trial's node learns its outcome)."""
        work = attempt.work
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

    def _requeue(
        self, attempt: Attempt, error: BaseException, kind: FailureType, blame: Blame
    ) -> list[Command]:
        """Run the call again elsewhere, first in line, charging no retry; the failure is
        put on record as ``kind`` with ``blame``."""
        work = attempt.work
        out = self._on_record(attempt, error, kind, blame)
        work.avoid = work.avoid | {attempt.node_id}
        if not (work.speculated and self._twin_running(work)):
            self._queue(work)
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

    def _blame_user_error(self, attempt: Attempt, error: BaseException) -> bool:
        """The user's own exception: count its kind; True when its node's user failures
        stand far above its peers' (the only way it counts against a node)."""
        kind = user_error_kind(error)
        if kind is not None:
            self.user_errors[kind] += 1
        return self._rates.finished(attempt.node_id, failed=True)

    def _cancel(self, attempt: Attempt) -> list[Command]:
        """Cancel a dropped attempt; where that kills its worker (an actor), the worker
        takes no more work and its other attempts rerun elsewhere."""
        out: list[Command] = [Cancel(attempt)]
        if self.cancel_kills_worker:
            out.extend(self._retire(attempt.node_id, "had its worker stopped"))
        return out

    def _retire(self, node_id: str, reason: str) -> list[Command]:
        """Take a worker (an actor) out for good: no more work for it, even if a stale
        node table still lists it; its attempts rerun elsewhere, charging nobody."""
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
            self._queue(attempt.work)
        return out

    def _feed_queued(self, kind: str) -> None:
        """Queued calls of a callable that ran out of memory ask for what its retry got."""
        for shape, queue in list(self._queues.items()):
            moved = [w for w in queue if w.kind == kind and self.memory.feed(w)]
            if moved:
                self._queues[shape] = deque(w for w in queue if w.shape == shape)
                for work in moved:
                    self._queue(work, front=False)


def _is_pickling_error(error: BaseException) -> bool:
    """Ray could not pickle the call's arguments (or the callable)."""
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, pickle.PicklingError) or "pickl" in text or "serializ" in text
