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
(``ray_ft._batch_task``, the Ray side; this module is pure).
"""

from __future__ import annotations

import math

from ray_ft._work import Work

__all__ = ["BATCH_BELOW_S", "BATCH_TARGET_S", "MAX_BATCH", "batch_size", "batchable"]

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
