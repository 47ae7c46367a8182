"""The one placement function: spread tasks over free capacity as evenly as possible.

Used by the manager's ``reassign_tasks`` (a plan for many tasks) and by the executor's
scheduler (one attempt at a time: the node with the most free room).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

__all__ = ["water_fill"]


def water_fill(free: Mapping[str, int], n_tasks: int) -> list[tuple[str, int]]:
    """Split ``n_tasks`` so that the free capacity left is as even as possible.

    Finds the level L such that giving each worker max(0, free - L) tasks uses at most
    n_tasks, then hands the remainder one each to the fullest workers at the level.
    O(W log W), independent of the number of tasks.
    """
    if n_tasks <= 0 or not free:
        return []
    if n_tasks == 1:  # the scheduler's case, per attempt: the roomiest worker (first by id)
        best = min(free, key=lambda worker: (-free[worker], worker))
        return [(best, 1)] if free[best] > 0 else []
    total = sum(free.values())
    if n_tasks >= total:
        return sorted(free.items())
    caps = sorted(free.values())
    prefix = [0]
    for c in caps:
        prefix.append(prefix[-1] + c)

    def assigned(level: int) -> int:
        i = bisect.bisect_right(caps, level)
        return (prefix[-1] - prefix[i]) - level * (len(caps) - i)

    low, high = 0, caps[-1]
    while low < high:  # smallest level with assigned(level) <= n_tasks
        mid = (low + high) // 2
        if assigned(mid) <= n_tasks:
            high = mid
        else:
            low = mid + 1
    level = low
    counts = {w: max(0, f - level) for w, f in free.items()}
    remainder = n_tasks - sum(counts.values())
    if remainder:
        at_level = sorted(
            (w for w, f in free.items() if f >= level and level > 0),
            key=lambda w: (-free[w], w),
        )
        for worker_id in at_level[:remainder]:
            counts[worker_id] += 1
    return sorted((w, c) for w, c in counts.items() if c > 0)
