"""The seed's reassignment plan: spread tasks over free capacity as evenly as possible.

``FaultToleranceManager.reassign_tasks`` plans where many tasks go at once (the executor's
scheduler places one attempt at a time, in ``ray_ft.core.placement``).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable, Mapping

from ray_ft.manager.breaker import BreakerState, CircuitBreaker
from ray_ft.manager.records import WorkerInfo, WorkerStatus

__all__ = ["plan_reassignment", "water_fill"]


def plan_reassignment(
    failed_worker_id: str | None,
    task_ids: Iterable[str],
    available_workers: Iterable[WorkerInfo | str],
    workers: Mapping[str, WorkerInfo],
    breakers: Mapping[str, CircuitBreaker],
) -> dict[str, str]:
    """Plan where tasks go: never to the failed node, a failed/dead one or an OPEN breaker.

    Free capacity is filled evenly first; tasks beyond it are spread over the eligible
    workers by load, so no task is dropped while any eligible worker exists. HALF_OPEN
    nodes take at most their remaining trial allowance. The plan changes no load.
    """
    not_alive = {w for w, info in workers.items() if info.status != WorkerStatus.ALIVE}
    free: dict[str, int] = {}
    overflow: dict[str, int] = {}  # eligible workers that may queue beyond capacity
    for candidate in available_workers:
        info = (
            candidate
            if isinstance(candidate, WorkerInfo)
            else workers.get(candidate, WorkerInfo(candidate))
        )
        worker_id = info.worker_id
        if (
            worker_id == failed_worker_id
            or info.status != WorkerStatus.ALIVE
            or worker_id in not_alive
        ):
            continue
        slots = info.free
        breaker = breakers.get(worker_id)
        state = None if breaker is None else breaker.state
        if state is BreakerState.OPEN:
            continue
        if state is BreakerState.HALF_OPEN:
            assert breaker is not None
            slots = min(slots, breaker.trials_available())
        else:
            overflow[worker_id] = info.load + info.free
        if slots > 0:
            free[worker_id] = free.get(worker_id, 0) + slots
    tasks = list(task_ids)
    counts = water_fill(free, len(tasks))
    order = [w for w, n in counts for _ in range(n)]
    rest = tasks[len(order) :]
    if rest and overflow:
        # round-robin over the eligible workers, least loaded (after the fill) first
        placed = collections.Counter(dict(counts))
        ranked = sorted(overflow, key=lambda w: (overflow[w] + placed[w], w))
        order.extend(ranked[i % len(ranked)] for i in range(len(rest)))
    return dict(zip(tasks, order))


def water_fill(free: Mapping[str, int], n_tasks: int) -> list[tuple[str, int]]:
    """Split ``n_tasks`` so that the free capacity left is as even as possible.

    Finds the level L such that giving each worker max(0, free - L) tasks uses at most
    n_tasks, then hands the remainder one each to the fullest workers at the level.
    O(W log W), independent of the number of tasks.
    """
    if n_tasks <= 0 or not free:
        return []
    if n_tasks == 1:  # one task: the roomiest worker (first by id)
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
