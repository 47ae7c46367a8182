"""What the scheduler says and hears: commands, the exclusions snapshot, CapacityError.

Plain frozen dataclasses (no Ray): the scheduler returns commands, the Ray loop carries
them out; the manager's node verdicts reach the scheduler as an Exclusions snapshot.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from collections.abc import Mapping
from typing import Any

from ray_ft.core.work import Attempt
from ray_ft.failures import FailureEvent

__all__ = [
    "AcquireTrial",
    "Cancel",
    "CapacityError",
    "Command",
    "Exclusions",
    "Launch",
    "LaunchBatch",
    "ReleaseTrial",
    "Report",
    "Resolve",
]


class CapacityError(RuntimeError):
    """No usable node could run the task for ``capacity_wait_timeout`` seconds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Exclusions:
    """A snapshot of where work may not go (and which nodes take trial work only)."""

    excluded: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    dead: frozenset[str] = frozenset()
    degraded: frozenset[str] = frozenset()
    half_open: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Exclusions:
        """From ``FaultToleranceManager.exclusions_snapshot()`` (the actor's answer too)."""
        return cls(
            excluded=frozenset(data.get("excluded", ())),
            failed=frozenset(data.get("failed", ())),
            dead=frozenset(data.get("dead", ())),
            degraded=frozenset(data.get("degraded", ())),
            half_open=tuple(sorted(dict(data.get("half_open", {})).items())),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Launch:
    """Hand this attempt to Ray, pinned to ``attempt.node_id``."""

    attempt: Attempt


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchBatch:
    """Hand these attempts (one callable, one request) to Ray as one task on one node."""

    attempts: tuple[Attempt, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel an attempt in Ray (force); its late result, if any, is dropped."""

    attempt: Attempt


@dataclasses.dataclass(frozen=True, slots=True)
class Resolve:
    """Set a future's result or exception (done outside any lock: callbacks run here)."""

    future: cf.Future[Any]
    value: Any = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """Send failure events to the manager (blamed; only node-blamed ones charge a node)."""

    events: tuple[FailureEvent, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AcquireTrial:
    """Ask the manager for one trial lease on a HALF_OPEN node."""

    node_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseTrial:
    """Give a trial lease back: success closes the breaker, a node fault reopens it."""

    node_id: str
    success: bool
    event: FailureEvent | None = None


Command = Launch | LaunchBatch | Cancel | Resolve | Report | AcquireTrial | ReleaseTrial
