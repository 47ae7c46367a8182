"""The seed's records of tasks and nodes (``Task``, ``WorkerInfo``, ``WorkerStatus``).

Their names and fields are part of the seed's contract: the manager's state file stores
them as they are, and ``FaultToleranceManager`` hands them out.
"""

from __future__ import annotations

import dataclasses
import enum

from ray_ft.core.attribution import Blame
from ray_ft.failures import FailureEvent, FailureType

__all__ = [
    "HISTORY_LIMIT",
    "NODE_FAULTS",
    "TAKES_WORK",
    "Task",
    "WorkerInfo",
    "WorkerStatus",
    "charges_node",
]

HISTORY_LIMIT = 1000  #: failure events, failed tasks and breaker transitions kept

#: failure types that are the node's when an event carries no blame
NODE_FAULTS = frozenset(
    {
        FailureType.WORKER_CRASH,
        FailureType.NODE_DIED,
        FailureType.NETWORK_ERROR,
        FailureType.OUT_OF_MEMORY,
    }
)


class WorkerStatus(enum.StrEnum):
    """A node's status as the manager holds it (``WorkerInfo.status``)."""

    ALIVE = "alive"
    DEGRADED = "degraded"  # a degraded health verdict: placed last (work only where no ok
    # node has room), running work stays
    FAILED = "failed"  # stopped answering, or a fatal health verdict: may come back
    DEAD = "dead"  # Ray says the node is gone


TAKES_WORK = frozenset({WorkerStatus.ALIVE, WorkerStatus.DEGRADED})  #: statuses that take work


@dataclasses.dataclass(slots=True)
class Task:
    """A unit of work as the manager sees it: an id, a name, failures so far, its node."""

    task_id: str
    name: str | None = None
    attempts: int = 0
    worker_id: str | None = None


@dataclasses.dataclass(slots=True)
class WorkerInfo:
    """A node that can run tasks: status, capacity (slots) and current load."""

    worker_id: str
    status: str = WorkerStatus.ALIVE
    capacity: int = 1
    load: int = 0

    @property
    def free(self) -> int:
        """Slots not in use."""
        return max(0, self.capacity - self.load)


def charges_node(event: FailureEvent) -> bool:
    """The event counts against its node: blamed on it, or (no blame) a node fault."""
    if event.blame is not None:
        return event.blame == Blame.NODE.value
    return event.failure_type in NODE_FAULTS
