"""The manager's state file format: what survives a restart, as JSON-ready data (pure).

``FaultToleranceManager.get_state`` writes it and ``load_state`` reads it back; the
actor's state writer stores it (coalesced, at most once a second). A file of another
``format_version`` is refused with what to do, never half read.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray_ft.failures import FailureEvent
from ray_ft.manager.records import HISTORY_LIMIT, Task, WorkerInfo

if TYPE_CHECKING:
    from ray_ft.manager.state import FaultToleranceManager

__all__ = ["STATE_FORMAT_VERSION", "decode", "encode"]

STATE_FORMAT_VERSION = 2


def encode(m: FaultToleranceManager) -> dict[str, Any]:
    """Everything of ``m`` that must survive a restart (its indexes are rebuilt)."""
    return {
        "format_version": STATE_FORMAT_VERSION,
        "config": m.config.to_dict(),
        "workers": {w: dataclasses.asdict(i) for w, i in m.workers.items()},
        "breakers": {w: b.get_state() for w, b in m.circuit_breakers.items()},
        "task_retries": dict(m.task_retries),
        "worker_failures": {
            w: [e.to_dict() for e in events] for w, events in m.worker_failures.items()
        },
        "failed_tasks": [dataclasses.asdict(task) for task in m.failed_tasks],
        "history": [e.to_dict() for e in m.history],
        "failure_counts": dict(m.failure_counts),
        "health_reasons": dict(m.health_reasons),
        "health_severity": dict(m.health_severity),
        "liveness_failures": dict(m.liveness_failures),
        "breaker_transitions": list(m.breaker_transitions),
    }


def decode(state: Mapping[str, Any]) -> dict[str, Any]:
    """The manager's attributes from an :func:`encode` snapshot, by name (``breakers``
    stays each breaker's own state, for ``CircuitBreaker.load_state``)."""
    if state.get("format_version", STATE_FORMAT_VERSION) != STATE_FORMAT_VERSION:
        msg = (
            f"manager state format_version={state.get('format_version')!r} is not "
            f"supported (this ray_ft reads {STATE_FORMAT_VERSION}); remove the state file "
            "to start clean"
        )
        raise ValueError(msg)
    return {
        "workers": {w: WorkerInfo(**i) for w, i in state.get("workers", {}).items()},
        "breakers": dict(state.get("breakers", {})),
        "task_retries": {t: int(n) for t, n in state.get("task_retries", {}).items()},
        "worker_failures": {
            w: [FailureEvent.from_dict(e) for e in events]
            for w, events in state.get("worker_failures", {}).items()
        },
        "failed_tasks": [Task(**d) for d in state.get("failed_tasks", [])],
        "history": collections.deque(
            (FailureEvent.from_dict(e) for e in state.get("history", [])), maxlen=HISTORY_LIMIT
        ),
        "failure_counts": collections.Counter(state.get("failure_counts", {})),
        "health_reasons": {w: list(r) for w, r in state.get("health_reasons", {}).items()},
        "health_severity": dict(state.get("health_severity", {})),
        "liveness_failures": dict(state.get("liveness_failures", {})),
        "breaker_transitions": list(state.get("breaker_transitions", [])),
    }
