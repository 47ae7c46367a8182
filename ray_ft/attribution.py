"""Fault attribution: is a failure the node's, the task's, or nobody's?

Only node faults may count toward a node's breaker. A crash that follows a task from
node to node is the task's (a poison input); a node is suspect when *different* tasks crash
there and then succeed elsewhere. Attempts that ray_ft itself abandons or re-places charge
nobody. The ledger is pure (no Ray, no clock): callers feed it outcomes and report the
events it hands back.
"""

from __future__ import annotations

import dataclasses
import enum

from ray_ft.failures import FailureEvent, FailureType

__all__ = ["DIRECT_NODE_FAULTS", "SUSPECT_FAILURES", "Blame", "CrashLedger"]


class Blame(str, enum.Enum):
    """Whom a failure is charged to."""

    NODE = "node"
    TASK = "task"
    PLACEMENT = "placement"
    NONE = "none"  # ray_ft abandoned the attempt itself
    UNDECIDED = "undecided"  # a crash that is the node's only if the task succeeds elsewhere

    def __str__(self) -> str:
        return self.value


#: Evidence against the node at once: Ray says the node (or the link to it) failed.
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
