"""FailureRules: what an attempt's failure leads to, as a verdict from the facts (pure).

As :class:`~ray_ft.core.retry.RetryPolicy` returns a ``RetryDecision``, the rules return
a :class:`Verdict` and change nothing; the scheduler applies it through its state's
primitives (``ray_ft.core.outcomes``). Who is blamed is decided elsewhere, by where the
error was raised (``ray_ft.core.attribution``); these rules decide what happens next.
"""

from __future__ import annotations

import dataclasses
import enum

from ray_ft.core.retry import RetryPolicy
from ray_ft.failures import FailureType

__all__ = ["FailureRules", "Next", "Verdict"]


class Next(enum.StrEnum):
    """What happens to the call after a failed attempt."""

    RERUN = "rerun"  #: its node was drained (a preemption): run again elsewhere, no retry
    RECORD = "record"  #: its other copy still runs: the failure goes on record, nothing else
    RETRY = "retry"  #: wait out ``delay``, then run again (elsewhere, unless the user's error)
    CANCEL = "cancel"  #: it would retry, but the executor is cancelling its calls
    FAIL = "fail"  #: the user's own error, not retried (again): the call ends with it
    GIVE_UP = "give_up"  #: out of retries: the call ends naming every failure


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The rules' word on one failed attempt."""

    next: Next
    delay: float = 0.0  #: before the retry (RETRY)
    elsewhere: bool = False  #: the retry avoids the node it failed on
    more_memory: bool = False  #: the retry asks for more memory (an out-of-memory kill)
    reason: str = ""  #: why, as the retry policy said it

    @property
    def counted(self) -> bool:
        """The failure counts toward the call's retries (and is put on its record)."""
        return self.next not in (Next.RERUN, Next.RECORD)


class FailureRules:
    """The scheduler's failure rules; ``retry`` decides whether and when to retry."""

    __slots__ = ("retry",)

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry

    def judge(
        self,
        failure_type: FailureType,
        error: BaseException,
        *,
        failures: int,
        draining: bool,
        twin_running: bool,
        cancelling: bool,
    ) -> Verdict:
        """The verdict on a failed attempt of a call that had failed ``failures`` times
        before; ``draining``: its node has a drain notice; ``twin_running``: another copy
        of the call is in flight; ``cancelling``: the executor cancels what is left."""
        if draining and failure_type.is_system:
            # killed by its node's drain (a preemption): Ray does not count these, nor do we
            return Verdict(Next.RERUN, elsewhere=True)
        if twin_running:
            # one copy failed while the other still runs (Spark's rule): no retry counted
            return Verdict(Next.RECORD)
        decision = self.retry.decide(failures + 1, failure_type, error)
        if decision and cancelling:
            return Verdict(Next.CANCEL, reason=decision.reason)
        if decision:
            return Verdict(
                Next.RETRY,
                delay=decision.delay,
                # the node may be at fault: retry elsewhere (an application error is the
                # task's own, and the same node keeps its warm worker)
                elsewhere=failure_type is not FailureType.APPLICATION_ERROR,
                more_memory=failure_type is FailureType.OUT_OF_MEMORY,
                reason=decision.reason,
            )
        if failure_type is FailureType.APPLICATION_ERROR:
            return Verdict(Next.FAIL, reason=decision.reason)
        return Verdict(Next.GIVE_UP, reason=decision.reason)
