"""Failure types, failure events, and the mapping from Ray's exceptions to them.

Ray raises a zoo of exception classes; ray_ft reduces each to one of six FailureTypes
so that retry rules, breakers and metrics can reason about *why* an attempt failed.
``ray.exceptions`` is imported lazily: this module belongs to the Ray-free core.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FailureEvent",
    "FailureType",
    "NodeFailedError",
    "Severity",
    "TaskFailedError",
    "TaskTimeoutError",
    "classify_failure",
    "user_error_kind",
]


class FailureType(enum.StrEnum):
    """Why an attempt failed; the value is the lower-case name."""

    WORKER_CRASH = "worker_crash"
    NODE_DIED = "node_died"
    TASK_TIMEOUT = "task_timeout"
    NETWORK_ERROR = "network_error"
    OUT_OF_MEMORY = "out_of_memory"
    APPLICATION_ERROR = "application_error"

    @property
    def is_system(self) -> bool:
        """True for failures of the infrastructure rather than of the user's code."""
        return self is not FailureType.APPLICATION_ERROR

    @classmethod
    def parse(cls, value: FailureType | str) -> FailureType:
        """Accept a member, its value ("node_died") or its name ("NODE_DIED")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        valid = ", ".join(member.value for member in cls)
        msg = f"unknown failure type {value!r}; pass one of: {valid}"
        raise ValueError(msg)


SYSTEM_FAILURES: frozenset[FailureType] = frozenset(t for t in FailureType if t.is_system)


@dataclasses.dataclass(frozen=True, slots=True)
class FailureEvent:
    """One observed failure: of a task attempt, a worker process or a node."""

    timestamp: float
    failure_type: FailureType
    details: str | None = None
    task_id: str | None = None
    worker_id: str | None = None
    attempt: int | None = None
    blame: str | None = None  # "node", "task", "placement" or "none" (see ray_ft.core.attribution)
    memory_request: float | None = None  # bytes an out-of-memory attempt had asked for

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (the failure type as its value)."""
        data = dataclasses.asdict(self)
        data["failure_type"] = self.failure_type.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureEvent:
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["failure_type"] = FailureType.parse(fields["failure_type"])
        return cls(**fields)


class Severity(enum.StrEnum):
    """How bad a health finding is: ``fatal`` excludes a node, ``degraded`` pauses new work.
    Here, not in ``health``, because the manager judges by it too."""

    OK = "ok"
    DEGRADED = "degraded"
    FATAL = "fatal"

    @property
    def rank(self) -> int:
        """0 for ok, 1 for degraded, 2 for fatal (for taking the worst of several)."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.OK: 0, Severity.DEGRADED: 1, Severity.FATAL: 2}


class TaskTimeoutError(TimeoutError):
    """An attempt ran longer than its ``task_timeout`` and was cancelled by the watchdog."""

    def __init__(self, timeout: float, task_name: str | None = None) -> None:
        self.timeout = timeout
        self.task_name = task_name
        name = f" {task_name!r}" if task_name else ""
        super().__init__(f"task{name} ran longer than task_timeout={timeout}s and was killed")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout, self.task_name))


class NodeFailedError(RuntimeError):
    """An attempt was abandoned because its node was declared failed or dead."""

    def __init__(self, node_id: str, reason: str) -> None:
        self.node_id = node_id
        self.reason = reason
        super().__init__(f"node {node_id} {reason}; the attempt was abandoned and rerun elsewhere")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node_id, self.reason))


class TaskFailedError(Exception):
    """A task exhausted its retries on system failures (chained to the last error)."""

    def __init__(
        self,
        message: str,
        *,
        failure_type: FailureType,
        attempts: int,
        events: Sequence[FailureEvent] = (),
    ) -> None:
        super().__init__(message)
        self.failure_type = failure_type
        self.attempts = attempts
        self.events = tuple(events)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_failed, (str(self), self.failure_type, self.attempts, self.events))


def _rebuild_task_failed(
    message: str, failure_type: FailureType, attempts: int, events: tuple[FailureEvent, ...]
) -> TaskFailedError:
    return TaskFailedError(message, failure_type=failure_type, attempts=attempts, events=events)


# Ray exception class name -> failure type, most specific first (isinstance order matters:
# ObjectFetchTimedOutError is an ObjectLostError, RayChannelTimeoutError a RayChannelError).
_RAY_RULES: tuple[tuple[str, FailureType], ...] = (
    ("WorkerCrashedError", FailureType.WORKER_CRASH),
    ("LocalRayletDiedError", FailureType.WORKER_CRASH),
    ("NodeDiedError", FailureType.NODE_DIED),
    ("ObjectFetchTimedOutError", FailureType.TASK_TIMEOUT),
    ("ObjectLostError", FailureType.NODE_DIED),
    ("PlasmaObjectNotAvailable", FailureType.NODE_DIED),
    ("OutOfMemoryError", FailureType.OUT_OF_MEMORY),
    ("ObjectStoreFullError", FailureType.OUT_OF_MEMORY),
    ("GetTimeoutError", FailureType.TASK_TIMEOUT),
    ("TaskCancelledError", FailureType.TASK_TIMEOUT),
    ("ActorUnavailableError", FailureType.NETWORK_ERROR),
    ("RpcError", FailureType.NETWORK_ERROR),
    ("PendingCallsLimitExceeded", FailureType.NETWORK_ERROR),
    ("RayChannelTimeoutError", FailureType.TASK_TIMEOUT),
    ("RayChannelError", FailureType.NETWORK_ERROR),
    # Errors of configuration or of the caller: retrying elsewhere cannot help. A full
    # disk (object spilling failed) is the disk's, not memory: never an OOM retry.
    ("OutOfDiskError", FailureType.APPLICATION_ERROR),
    ("RuntimeEnvSetupError", FailureType.APPLICATION_ERROR),
    ("TaskUnschedulableError", FailureType.APPLICATION_ERROR),
    ("ActorUnschedulableError", FailureType.APPLICATION_ERROR),
    ("ActorPlacementGroupRemoved", FailureType.APPLICATION_ERROR),
    ("TaskPlacementGroupRemoved", FailureType.APPLICATION_ERROR),
    ("AuthenticationError", FailureType.APPLICATION_ERROR),
    ("CrossLanguageError", FailureType.APPLICATION_ERROR),
    ("UserCodeException", FailureType.APPLICATION_ERROR),
    ("UnserializableException", FailureType.APPLICATION_ERROR),
    ("ActorAlreadyExistsError", FailureType.APPLICATION_ERROR),
    ("ActorHandleNotFoundError", FailureType.APPLICATION_ERROR),
    ("AsyncioActorExit", FailureType.APPLICATION_ERROR),
    ("ObjectRefStreamEndOfStreamError", FailureType.APPLICATION_ERROR),
    ("OufOfBandObjectRefSerializationException", FailureType.APPLICATION_ERROR),
)

_BUILTIN_RULES: tuple[tuple[type[BaseException], FailureType], ...] = (
    (TaskTimeoutError, FailureType.TASK_TIMEOUT),
    (NodeFailedError, FailureType.NODE_DIED),
    (MemoryError, FailureType.OUT_OF_MEMORY),
    (ConnectionError, FailureType.NETWORK_ERROR),
    (TimeoutError, FailureType.TASK_TIMEOUT),
)


def classify_failure(exc: BaseException) -> FailureType:
    """Map an exception seen by the driver to its FailureType.

    Where an exception was raised decides: anything the user's code raised (the cause of a
    RayTaskError) is APPLICATION_ERROR whatever its Python type, so a ConnectionError from
    the objective's own web service is never mistaken for Ray's network failing.
    :func:`user_error_kind` keeps its kind for the stats. Ray's own exceptions about the
    infrastructure map as docs/design.md says; bare built-ins (an exception raised outside a
    task) map by type.
    """
    try:
        import ray.exceptions as ray_exc
    except ImportError:  # pragma: no cover - ray is a hard dependency
        ray_exc = None  # type: ignore[assignment]

    if ray_exc is not None:
        if isinstance(exc, ray_exc.RayTaskError) or type(exc) is ray_exc.RaySystemError:
            # raised by the user's code; or the driver could not deserialize a result
            # (a plain RaySystemError): neither is a crash to retry on another node
            return FailureType.APPLICATION_ERROR
        if isinstance(exc, ray_exc.RayActorError) and not isinstance(
            exc, ray_exc.ActorUnavailableError
        ):
            if exc.actor_init_failed:
                return FailureType.APPLICATION_ERROR
            if exc.preempted:
                return FailureType.NODE_DIED
            return FailureType.WORKER_CRASH
        for name, failure_type in _RAY_RULES:
            cls = getattr(ray_exc, name, None)
            if cls is not None and isinstance(exc, cls):
                return failure_type
    for builtin, failure_type in _BUILTIN_RULES:
        if isinstance(exc, builtin):
            return failure_type
    if ray_exc is not None and isinstance(exc, ray_exc.RayError):
        return FailureType.WORKER_CRASH  # an unknown Ray system error: worth a retry
    return FailureType.APPLICATION_ERROR


_USER_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionError, "network"),
    (TimeoutError, "timeout"),
    (MemoryError, "memory"),
)


def user_error_kind(exc: BaseException) -> str | None:
    """The kind of an exception the user's own code raised ("network", "timeout",
    "memory"), for stats only: it is the task's failure, never evidence against a node."""
    cause = getattr(exc, "cause", None)  # a RayTaskError: the user's exception inside
    target = cause if isinstance(cause, BaseException) else exc
    for builtin, kind in _USER_KINDS:
        if isinstance(target, builtin):
            return kind
    return None
