"""What Ray answered for an attempt or a batch, as the scheduler's events.

Ray's exception is unwrapped to the user's own and classified here (placement: Ray's
"cannot schedule there", which re-places the call and charges nobody); a batch's answer
is split into each member's own result, exception, or "not run" (its results filled the
batch's memory budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray.exceptions as ray_exc

from ray_ft.core.events import AttemptDone, BatchFailed, BatchUnrun, Event
from ray_ft.core.work import Attempt
from ray_ft.failures import FailureType, classify_failure
from ray_ft.runtime.batch_task import unpack_outcome
from ray_ft.runtime.options import unwrap

__all__ = ["attempt_done", "batch_done"]


def attempt_done(attempt_id: int, value: Any, error: BaseException | None) -> AttemptDone:
    """One attempt's result, or Ray's exception for it."""
    if error is None:
        return AttemptDone(attempt_id, value=value)
    own, failure_type, placement = _read(error)
    return AttemptDone(attempt_id, error=own, failure_type=failure_type, placement=placement)


def batch_done(
    members: Sequence[Attempt], wanted: set[int], value: Any, error: BaseException | None
) -> list[Event]:
    """A batch's answer: Ray's exception for the batch as a whole (the scheduler splits
    it), or each wanted member's own outcome (``value``: one packed outcome per member, in
    order; ``wanted``: the attempt ids still in flight)."""
    if error is not None:
        own, failure_type, placement = _read(error)
        ids = tuple(a.attempt_id for a in members if a.attempt_id in wanted)
        return [BatchFailed(ids, own, failure_type, placement=placement)]
    events: list[Event] = []
    unrun: list[int] = []
    for index, attempt in enumerate(members):
        if attempt.attempt_id not in wanted:
            continue
        ran, result, raised = unpack_outcome(value[index])
        if not ran:
            unrun.append(attempt.attempt_id)
        elif raised is None:
            events.append(AttemptDone(attempt.attempt_id, value=result))
        else:  # the user's own exception, raised inside the batch task
            events.append(
                AttemptDone(
                    attempt.attempt_id, error=raised, failure_type=FailureType.APPLICATION_ERROR
                )
            )
    if unrun:
        events.append(BatchUnrun(tuple(unrun), len(members) - len(unrun)))
    return events


def _read(error: BaseException) -> tuple[BaseException, FailureType, bool]:
    """Ray's exception as the user's own, its failure type, and whether it is Ray's
    'cannot schedule there'."""
    placement = isinstance(error, ray_exc.TaskUnschedulableError)
    return unwrap(error), classify_failure(error), placement
