"""Paces: how fast each node runs each callable, learned from the attempts it ran (pure).

A pace is an EWMA of a node's runtimes per call of one callable. The first sample is
provisional: on a cold cluster it waited for its node to start a worker process, so it
is never judged slow on it and the next sample replaces it. The attempts in flight per
(node, callable) are kept too: one running longer than its pace says the pace went stale.
The node table (``ray_ft.core.nodes``) keeps its indexes in step with every pace set here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["RELEARN_S", "Paces"]

RELEARN_S = 10.0  # a node that stood back this long gets an attempt again (it may be well)
_EWMA = 0.3  # weight of the newest runtime in a pace
PaceKey = tuple[str, str]  # (node, callable)


class Paces:
    """Pace, when learned, provisional or not, and attempts in flight per (node, callable)."""

    __slots__ = ("last_done", "learned_at", "provisional", "running", "runtime")

    def __init__(self) -> None:
        self.runtime: dict[PaceKey, float] = {}  #: seconds per call
        self.learned_at: dict[PaceKey, float] = {}  #: when the pace was set (or retried)
        self.provisional: set[PaceKey] = set()  #: paces from one finished attempt
        #: launch times of the attempts in flight, in clock order
        self.running: dict[PaceKey, dict[int, float]] = {}
        self.last_done: dict[str, float] = {}  #: node -> when its last attempt finished

    def get(self, node: str, kind: str) -> float | None:
        return self.runtime.get((node, kind))

    def set(self, node: str, kind: str, pace: float, now: float) -> float | None:
        """Set a pace; returns the one it replaces."""
        key = (node, kind)
        old = self.runtime.get(key)
        self.runtime[key] = pace
        self.learned_at[key] = now
        return old

    def fold(
        self,
        node: str,
        kind: str,
        launched_at: float,
        queued_behind: bool,
        now: float,
        members: int,
        *,
        live: bool,
    ) -> tuple[float, float]:
        """An attempt of ``members`` calls launched at ``launched_at`` finished now: its
        runtime per call and the node's new pace (not yet set). An attempt that waited in
        Ray behind another (``queued_behind``) is timed from when that one finished."""
        start = launched_at
        if queued_behind:
            start = max(start, self.last_done.get(node, start))
        if live:
            self.last_done[node] = now
        runtime = max(0.0, now - start) / members
        key = (node, kind)
        old = self.runtime.get(key)
        if old is None or key in self.provisional:  # the first sample, or the second
            if old is None and live:
                self.provisional.add(key)
            else:
                self.provisional.discard(key)
            return runtime, runtime
        return runtime, (1 - _EWMA) * old + _EWMA * runtime

    def started(self, node: str, kind: str, attempt_id: int, now: float) -> None:
        """An attempt was launched; a pace older than ``RELEARN_S`` counts as tried again
        (one attempt per relearn)."""
        key = (node, kind)
        self.running.setdefault(key, {})[attempt_id] = now
        if key in self.runtime and now - self.learned_at.get(key, now) > RELEARN_S:
            self.learned_at[key] = now

    def stopped(self, node: str, kind: str, attempt_id: int) -> None:
        running = self.running.get((node, kind))
        if running is not None:
            running.pop(attempt_id, None)  # kept while the node lives: no churn per attempt

    def oldest_running(self, node: str, kind: str) -> float | None:
        """Launch time of the oldest attempt in flight, None when none is."""
        running = self.running.get((node, kind))
        return next(iter(running.values())) if running else None

    def forget(self, node: str, kinds: Iterable[str]) -> None:
        """The node left: its entries for these callables go."""
        for kind in kinds:
            key = (node, kind)
            self.runtime.pop(key, None)
            self.learned_at.pop(key, None)
            self.provisional.discard(key)
            self.running.pop(key, None)
        self.last_done.pop(node, None)
