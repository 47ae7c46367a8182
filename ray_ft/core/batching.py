"""Adaptive batching: many tiny calls of one callable packed into one Ray task.

A Ray task costs the driver and the cluster about a millisecond whatever it runs, so calls
far shorter than that are packed (joblib's ``batch_size='auto'`` idea): the batch size is
the callable's learned pace per call into ``BATCH_TARGET_S``, at most the queue spread over
the usable slots (every slot stays busy), never more than ``MAX_BATCH``. Only calls already
queued are packed: a lone call goes at once, nothing waits to fill a batch.

Inside the task each member runs on its own and its result or exception comes back on its
own (as Ray's ``multiprocessing.Pool`` and Dask's ``execute_task`` do), so a member's
exception is that member's failure. ObjectRefs among a member's top-level arguments become
top-level arguments of the batch task, so Ray resolves them as it would for one call
(``ray_ft.runtime.batch_task``, the Ray side; this module is pure).
"""

from __future__ import annotations

import math
from collections import deque

from ray_ft.core.work import Group, Work

__all__ = [
    "BATCH_BELOW_S",
    "BATCH_TARGET_S",
    "MAX_BATCH",
    "batch_size",
    "batch_timeout",
    "batchable",
    "take_members",
]

BATCH_TARGET_S = 0.05  # a batch long enough to hide ~1 ms of per-task cost (2 %)
BATCH_BELOW_S = BATCH_TARGET_S / 4  # calls this fast or faster are packed (4 or more)
MAX_BATCH = 1024


def batch_size(pace: float | None, queued: int, slots: int, cap: int | None) -> int:
    """Members for the next batch: 1 until the callable's pace is known and far below
    ``BATCH_TARGET_S``; at most the queue spread over ``slots``; at most ``cap``."""
    if cap is not None:  # map(chunksize=k), or a split batch: that many, as queued
        return max(1, min(cap, queued, MAX_BATCH))
    if pace is None or pace > BATCH_BELOW_S:
        return 1
    limit = int(BATCH_TARGET_S / max(pace, 1e-7))
    spread = math.ceil(queued / max(1, slots))
    return max(1, min(limit, spread, MAX_BATCH, queued))


def batchable(work: Work) -> bool:
    """A plain callable (pickled once), not a Ray remote function with its own options."""
    return work.blob is not None


def take_members(
    head: Work, queue: deque[Work], node_id: str, size: int
) -> tuple[list[Work], list[Work]]:
    """Pop the calls packed with ``head`` from the front of ``queue``: the same callable
    (identity and pickled code), request and cap, allowed on ``node_id``, up to ``size`` in
    all. Returns the members (marked running) and the calls popped that had already ended
    (cancelled while queued, or ended elsewhere): the caller finishes those."""
    members, ended = [head], []
    while queue and len(members) < size:
        work = queue[0]
        same = work.kind == head.kind and work.batch_cap == head.batch_cap
        if not (same and (work.blob is head.blob or work.blob == head.blob)):
            break
        if work.spec is not head.spec and work.spec != head.spec:
            break
        if node_id in work.avoid or node_id in work.unplaceable:
            break
        queue.popleft()
        if work.started and work.future.done():  # ended elsewhere (abort)
            ended.append(work)
        elif not work.started and not work.future.set_running_or_notify_cancel():
            ended.append(work)  # cancelled while it waited
        else:
            work.started = True
            members.append(work)
    return members, ended


def batch_timeout(timeout: float, group: Group | None) -> float:
    """Seconds an attempt may run: a call's ``timeout``; a batch's is one call's timeout
    beyond twice its expected run (members x pace), so a hanging member is found about as
    soon as alone (``timeout`` x members when the pace is unknown: an explicit chunksize)."""
    if group is None:
        return timeout
    if group.expected is not None:
        return timeout + 2.0 * group.expected
    return timeout * group.live
