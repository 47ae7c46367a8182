"""The manager's state file format: what survives a restart, as JSON-ready data (pure).

``FaultToleranceManager.get_state`` writes it and ``load_state`` reads it back; the
actor's state writer stores it (coalesced, at most once a second). A file of another
``format_version`` is refused with what to do, never half read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray_ft.manager.records import Task, WorkerInfo

if TYPE_CHECKING:
    from ray_ft.manager.state import FaultToleranceManager

__all__ = ["STATE_FORMAT_VERSION", "Saved", "decode", "encode"]

STATE_FORMAT_VERSION = 2


def encode(m: FaultToleranceManager) -> dict[str, Any]:
    """Everything of ``m`` that must survive a restart (its indexes are rebuilt)."""
    return {
        "format_version": STATE_FORMAT_VERSION,
        "config": m.config.to_dict(),
        "workers": {w: dataclasses.asdict(i) for w, i in m.workers.items()},
        **m.node_breakers.to_dict(),  # breakers, breaker_transitions
        "task_retries": dict(m.task_retries),
        **m.failures.to_dict(),  # worker_failures, history, failure_counts
        "failed_tasks": [dataclasses.asdict(task) for task in m.failed_tasks],
        **m.verdicts.to_dict(),  # health_reasons, health_severity, liveness_failures
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Saved:
    """The manager's own fields of a state file (its failure log, breakers and verdicts
    read their own sections)."""

    workers: dict[str, WorkerInfo]
    task_retries: dict[str, int]
    failed_tasks: list[Task]


def decode(state: Mapping[str, Any]) -> Saved:
    """The manager's fields from an :func:`encode` snapshot; a file of another format is
    refused with what to do."""
    if state.get("format_version", STATE_FORMAT_VERSION) != STATE_FORMAT_VERSION:
        msg = (
            f"manager state format_version={state.get('format_version')!r} is not "
            f"supported (this ray_ft reads {STATE_FORMAT_VERSION}); remove the state file "
            "to start clean"
        )
        raise ValueError(msg)
    return Saved(
        workers={w: WorkerInfo(**i) for w, i in state.get("workers", {}).items()},
        task_retries={t: int(n) for t, n in state.get("task_retries", {}).items()},
        failed_tasks=[Task(**d) for d in state.get("failed_tasks", [])],
    )
