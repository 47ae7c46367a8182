"""What the scheduler hears: one frozen dataclass per kind of event (pure: no Ray).

``Scheduler.handle(*events)`` is the one entry; it dispatches on the type exhaustively, so
an event nobody handles is a type error (mypy) and a ``TypeError`` at run time, never a
silent fallthrough. The Ray loop, the node watcher, the manager link and both ``Workers``
backends produce these; the commands the scheduler answers with are in
:mod:`ray_ft.core.commands`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ray_ft.core.autoscaling import NodeTypes
from ray_ft.core.commands import Exclusions
from ray_ft.core.work import Attempt, Work
from ray_ft.failures import FailureType

__all__ = [
    "Aborted",
    "AttemptDone",
    "BatchFailed",
    "BatchUnrun",
    "CancelQueued",
    "DrainingChanged",
    "Event",
    "ExclusionsChanged",
    "GaveUp",
    "LaunchFailed",
    "NodeTypesChanged",
    "NodesChanged",
    "Submitted",
    "Tick",
    "TrialGranted",
    "WentIdle",
    "WorkerLost",
    "WorkersBroken",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    """New calls (one submit, or a whole map): queued, launched where nodes have room."""

    works: tuple[Work, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptDone:
    """An attempt's outcome: ``value``, or ``error`` (the user's own exception where there
    is one) with its type; ``placement`` marks Ray's 'cannot schedule there'."""

    attempt_id: int
    value: Any = None
    error: BaseException | None = None
    failure_type: FailureType | None = None
    placement: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchFailed:
    """Ray refused the launch (arguments that do not pickle, a refused option)."""

    attempt_id: int
    error: BaseException


@dataclasses.dataclass(frozen=True, slots=True)
class Aborted:
    """ray_ft itself failed while taking this attempt's outcome: the call ends with it."""

    attempt: Attempt
    error: BaseException


@dataclasses.dataclass(frozen=True, slots=True)
class BatchFailed:
    """A batch died as a whole (its worker, its node; ``launch``: Ray refused it)."""

    attempt_ids: tuple[int, ...]
    error: BaseException
    failure_type: FailureType
    placement: bool = False
    launch: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class BatchUnrun:
    """Members a batch did not run (its results filled its memory budget)."""

    attempt_ids: tuple[int, ...]
    ran: int


@dataclasses.dataclass(frozen=True, slots=True)
class NodesChanged:
    """Ray's alive nodes (the pool: its live actors) and their resources."""

    nodes: Mapping[str, Mapping[str, float]]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerLost:
    """A worker (an actor of the pool) is gone for good."""

    node_id: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ExclusionsChanged:
    """A new snapshot of the manager's verdicts."""

    snapshot: Exclusions


@dataclasses.dataclass(frozen=True, slots=True)
class NodeTypesChanged:
    """The worker types the autoscaler can launch (None: no autoscaler, or unknown)."""

    types: NodeTypes | None


@dataclasses.dataclass(frozen=True, slots=True)
class DrainingChanged:
    """Nodes with a drain notice and their deadlines, on the scheduler's clock (0: none)."""

    deadlines: Mapping[str, float]


@dataclasses.dataclass(frozen=True, slots=True)
class TrialGranted:
    """The manager's answer to an ``AcquireTrial``."""

    node_id: str
    granted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WorkersBroken:
    """The workers cannot be started at all: every queued call fails with ``error``."""

    error: BaseException


@dataclasses.dataclass(frozen=True, slots=True)
class GaveUp:
    """The caller will not take these calls' results (a closed or timed-out map)."""

    works: tuple[Work, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CancelQueued:
    """``shutdown(cancel_futures=True)``: every call not running now ends."""


@dataclasses.dataclass(frozen=True, slots=True)
class WentIdle:
    """Nothing is queued or running: trial leases held but unused go back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: due timers and deadlines fire, stragglers are looked for."""


Event = (
    Submitted
    | AttemptDone
    | LaunchFailed
    | Aborted
    | BatchFailed
    | BatchUnrun
    | NodesChanged
    | WorkerLost
    | ExclusionsChanged
    | NodeTypesChanged
    | DrainingChanged
    | TrialGranted
    | WorkersBroken
    | GaveUp
    | CancelQueued
    | WentIdle
    | Tick
)
