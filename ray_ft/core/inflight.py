"""The attempts in flight, indexed so that no event scans them all (pure: no Ray).

By id (a result comes back), by node (a node fails: only its attempts are touched), by
call (a straggler's twin), the candidates for a backup (speculative first attempts only),
and a heap of deadlines (a timeout fires at the top). Removing an attempt is O(1); the
deadline heap drops removed entries when they reach the top, and is rebuilt once it holds
more than twice the attempts in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping

from ray_ft.core.work import Attempt, Work

__all__ = ["InFlight"]


class InFlight(Mapping[int, Attempt]):
    """Attempt id -> Attempt, with per-node, per-call, backup-candidate and deadline indexes."""

    def __init__(self) -> None:
        self._by_id: dict[int, Attempt] = {}
        self._on_node: dict[str, dict[int, Attempt]] = {}
        # per call that may get a backup: its attempt and backup (any other call's one
        # attempt in flight is Work.running: no table entry, no dict per call)
        self._copies: dict[Work, dict[int, Attempt]] = {}
        self._candidates: dict[int, Attempt] = {}  # attempts a straggler check looks at
        self._deadlines: list[tuple[float, int, int]] = []
        self._seq = itertools.count()

    # -- Mapping -----------------------------------------------------------------------------

    def __getitem__(self, attempt_id: int) -> Attempt:
        return self._by_id[attempt_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    # -- events ------------------------------------------------------------------------------

    def add(self, attempt: Attempt, *, timed: bool) -> None:
        """A launched attempt; ``timed``: its deadline goes on the heap (a batch's first)."""
        attempt_id = attempt.attempt_id
        self._by_id[attempt_id] = attempt
        self._on_node.setdefault(attempt.node_id, {})[attempt_id] = attempt
        work = attempt.work
        if work.speculate or work.running is not None or work in self._copies:
            first = work.running
            if first is not None:  # a second copy of a call without backups (preemption)
                work.running = None
                self._copies.setdefault(work, {})[first.attempt_id] = first
            self._copies.setdefault(work, {})[attempt_id] = attempt
            if (
                work.speculate
                and attempt.group is None
                and not attempt.trial
                and not attempt.backup
            ):
                self._candidates[attempt_id] = attempt
        else:
            work.running = attempt  # no backups: at most one attempt in flight
        if timed and attempt.deadline is not None:
            heapq.heappush(self._deadlines, (attempt.deadline, next(self._seq), attempt_id))

    def remove(self, attempt: Attempt) -> None:
        """The attempt ended, was dropped or cancelled (O(1))."""
        attempt_id = attempt.attempt_id
        self._by_id.pop(attempt_id, None)
        self._candidates.pop(attempt_id, None)
        on_node = self._on_node.get(attempt.node_id)
        if on_node is not None:
            on_node.pop(attempt_id, None)  # the node's entry goes when the node does
        if attempt.work.running is attempt:
            attempt.work.running = None
        copies = self._copies.get(attempt.work)
        if copies is not None:
            copies.pop(attempt_id, None)
            if not copies:
                del self._copies[attempt.work]
        if len(self._deadlines) > 2 * len(self._by_id) + 64:  # a heap cannot remove
            self._deadlines = [
                (a.deadline, next(self._seq), i)
                for i, a in self._by_id.items()
                if a.deadline is not None
            ]
            heapq.heapify(self._deadlines)

    def forget_node(self, node_id: str) -> None:
        """The node left (its attempts were removed): drop its index entry."""
        self._on_node.pop(node_id, None)

    # -- questions ---------------------------------------------------------------------------

    def on_node(self, node_id: str) -> list[Attempt]:
        """The attempts running on one node."""
        return list(self._on_node.get(node_id, {}).values())

    def twins(self, work: Work) -> list[Attempt]:
        """The call's attempts in flight (a first attempt and its backup)."""
        if work.running is not None:
            return [work.running]
        return list(self._copies.get(work, {}).values())

    def has_twin(self, work: Work) -> bool:
        return bool(self._copies.get(work))

    def candidates(self) -> list[Attempt]:
        """First attempts of calls that may get a backup (the straggler check's scope)."""
        return list(self._candidates.values())

    def due(self, now: float) -> Iterator[int]:
        """Pop the ids whose deadline passed (some may have ended meanwhile)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            yield heapq.heappop(self._deadlines)[2]

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None
