"""Fault attribution: is a failure the node's, the task's, or nobody's?

Where an exception was raised decides. Only what Ray (or ray_ft's own watchdog and
probes) says about the infrastructure is evidence against a node; an exception the user's
code raised is the task's, whatever its Python type. A crash that follows a task from
node to node is the task's (a poison input); a node is suspect when *different* tasks crash
there and then succeed elsewhere, or when the user's code fails there far more often than
on its peers (:class:`UserErrorRates`). Attempts that ray_ft itself abandons or re-places
charge nobody. Both ledgers are pure (no Ray, no clock): callers feed them outcomes and
report the events they hand back.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from ray_ft.failures import FailureEvent, FailureType

__all__ = ["DIRECT_NODE_FAULTS", "SUSPECT_FAILURES", "Blame", "CrashLedger", "UserErrorRates"]


class Blame(enum.StrEnum):
    """Whom a failure is charged to."""

    NODE = "node"
    TASK = "task"
    PLACEMENT = "placement"
    NONE = "none"  # ray_ft abandoned the attempt itself
    UNDECIDED = "undecided"  # a crash that is the node's only if the task succeeds elsewhere


#: Evidence against the node at once: Ray says the node (or the link to it) failed. The
#: user's own ConnectionError is APPLICATION_ERROR (see ray_ft.failures.classify_failure).
DIRECT_NODE_FAULTS = frozenset({FailureType.NODE_DIED, FailureType.NETWORK_ERROR})
#: Either the node's or the task's: decided by where the task crashes (or succeeds) next.
SUSPECT_FAILURES = frozenset(
    {FailureType.WORKER_CRASH, FailureType.OUT_OF_MEMORY, FailureType.TASK_TIMEOUT}
)


class CrashLedger:
    """Holds suspect failures per task until the task's fate says whose they were.

    - a suspect failure on a second, different node makes the task a poison task: none of
      its failures charge a node;
    - a success on another node charges the earlier suspect failures to their nodes;
    - a task that ends without success charges nobody.

    Every method returns the events to report now, each with its ``blame`` set, so that
    each failure reaches the manager exactly once, when its blame is known.
    """

    def __init__(self) -> None:
        self._suspect: dict[str, dict[str, list[FailureEvent]]] = {}
        self._poison: set[str] = set()

    def failed(self, event: FailureEvent) -> tuple[Blame, list[FailureEvent]]:
        """Blame for one attempt's failure, and the events decided by it."""
        task_id, node_id = event.task_id, event.worker_id
        if event.failure_type in DIRECT_NODE_FAULTS and node_id is not None:
            return Blame.NODE, [_blamed(event, Blame.NODE)]
        if event.failure_type not in SUSPECT_FAILURES or task_id is None or node_id is None:
            return Blame.TASK, [_blamed(event, Blame.TASK)]
        if task_id in self._poison:
            return Blame.TASK, [_blamed(event, Blame.TASK)]
        nodes = self._suspect.setdefault(task_id, {})
        if any(other != node_id for other in nodes):
            # it failed the same way on two nodes: the task's, and so were the earlier ones
            self._poison.add(task_id)
            earlier = [e for events in self._suspect.pop(task_id).values() for e in events]
            return Blame.TASK, [_blamed(e, Blame.TASK) for e in [*earlier, event]]
        nodes.setdefault(node_id, []).append(event)
        return Blame.UNDECIDED, []

    def succeeded(self, task_id: str, node_id: str | None) -> list[FailureEvent]:
        """The task succeeded on ``node_id``: its suspect failures elsewhere were the nodes'."""
        self._poison.discard(task_id)
        nodes = self._suspect.pop(task_id, None) or {}
        return [
            _blamed(e, Blame.NODE if n != node_id else Blame.TASK)
            for n, events in nodes.items()
            for e in events
        ]

    def finished(self, task_id: str) -> list[FailureEvent]:
        """The task ended without success (or was cancelled): its failures charge nobody."""
        self._poison.discard(task_id)
        nodes = self._suspect.pop(task_id, None) or {}
        return [_blamed(e, Blame.TASK) for events in nodes.values() for e in events]

    def is_poison(self, task_id: str) -> bool:
        """True once the task failed the same suspect way on two different nodes."""
        return task_id in self._poison

    def __len__(self) -> int:
        return len(self._suspect) + len(self._poison)


def _blamed(event: FailureEvent, blame: Blame) -> FailureEvent:
    return dataclasses.replace(event, blame=blame.value)


class UserErrorRates:
    """Finished attempts and user-code failures per node, to tell a bad node from bad luck.

    The user's exceptions are the task's. They count against a node only when that node's
    rate stands far above its peers': at least ``min_failures`` there, and more than
    ``factor`` times what the other nodes' rate predicts plus three standard deviations
    (Poisson), so a service that fails evenly everywhere (1 call in 3) never makes a node
    suspect while one that fails 10x more often on one node does. Each update is O(1);
    counts halve past ``horizon`` so old history fades; a departed node is forgotten.
    """

    def __init__(self, *, min_failures: int = 4, factor: float = 3.0, horizon: int = 1000):
        self.min_failures = min_failures
        self.factor = factor
        self.horizon = horizon
        self._calls: dict[str, float] = {}
        self._failures: dict[str, float] = {}
        self._total_calls = 0.0
        self._total_failures = 0.0

    def finished(self, node_id: str, *, failed: bool) -> bool:
        """Count one finished attempt; True when it is a failure that makes the node
        stand out from its peers."""
        calls = self._calls.get(node_id, 0.0) + 1
        failures = self._failures.get(node_id, 0.0) + failed
        self._total_calls += 1
        self._total_failures += failed
        if calls > self.horizon:  # fade: halve this node's counts, keep totals consistent
            self._total_calls -= calls / 2
            self._total_failures -= failures / 2
            calls, failures = calls / 2, failures / 2
        self._calls[node_id], self._failures[node_id] = calls, failures
        return failed and self.stands_out(node_id)

    def stands_out(self, node_id: str) -> bool:
        """The node's user failures are far above what its peers' rate predicts."""
        calls = self._calls.get(node_id, 0.0)
        failures = self._failures.get(node_id, 0.0)
        other_calls = self._total_calls - calls
        if failures < self.min_failures or other_calls < 2 * self.min_failures:
            return False  # too little evidence, or no peers to compare with
        expected = calls * (self._total_failures - failures) / other_calls
        return failures > self.factor * expected + 3 * math.sqrt(max(expected, 1.0))

    def forget(self, node_id: str) -> None:
        """The node left: drop its counts (and their share of the totals)."""
        self._total_calls -= self._calls.pop(node_id, 0.0)
        self._total_failures -= self._failures.pop(node_id, 0.0)

    def __len__(self) -> int:
        return len(self._calls)
