"""classify_failure covers every class in ray.exceptions, as docs/design.md maps them; where an
exception was raised decides (the user's own exceptions are APPLICATION_ERROR)."""

from __future__ import annotations

import inspect
import json
import pickle

import pytest
import ray.exceptions as rex

from ray_ft.failures import (
    FailureEvent,
    FailureType,
    NodeFailedError,
    TaskFailedError,
    TaskTimeoutError,
    classify_failure,
    user_error_kind,
)

W, N, T, NET, OOM, APP = (
    FailureType.WORKER_CRASH,
    FailureType.NODE_DIED,
    FailureType.TASK_TIMEOUT,
    FailureType.NETWORK_ERROR,
    FailureType.OUT_OF_MEMORY,
    FailureType.APPLICATION_ERROR,
)

EXPECTED = {
    "ActorAlreadyExistsError": APP,
    "ActorDiedError": W,
    "ActorHandleNotFoundError": APP,
    "ActorPlacementGroupRemoved": APP,
    "ActorUnavailableError": NET,
    "ActorUnschedulableError": APP,
    "AsyncioActorExit": APP,
    "AuthenticationError": APP,
    "CrossLanguageError": APP,
    "GetTimeoutError": T,
    "LocalRayletDiedError": W,
    "NodeDiedError": N,
    "ObjectFetchTimedOutError": T,
    "ObjectFreedError": N,
    "ObjectLostError": N,
    "ObjectReconstructionFailedError": N,
    # Ray 2.44-2.50 only: subclasses of ObjectLostError (the expected table holds every
    # release's classes; each run checks those of the installed Ray)
    "ObjectReconstructionFailedLineageEvictedError": N,
    "ObjectReconstructionFailedMaxAttemptsExceededError": N,
    "ObjectRefStreamEndOfStreamError": APP,
    "ObjectStoreFullError": OOM,
    "OufOfBandObjectRefSerializationException": APP,
    "OutOfDiskError": APP,  # the disk, not memory: never an OOM retry with more memory
    "OutOfMemoryError": OOM,
    "OwnerDiedError": N,
    "PendingCallsLimitExceeded": NET,
    "PlasmaObjectNotAvailable": N,
    "RayActorError": W,
    "RayCgraphCapacityExceeded": W,
    "RayChannelError": NET,
    "RayChannelTimeoutError": T,
    "RayDirectTransportError": W,
    "RayError": W,
    "RaySystemError": APP,  # the driver cannot deserialize a result: no node's fault
    "RayTaskError": APP,
    "ReferenceCountingAssertionError": N,
    "RpcError": NET,
    "RuntimeEnvSetupError": APP,
    "StreamingGeneratorReplayInconsistentError": W,
    "TaskCancelledError": T,
    "TaskPlacementGroupRemoved": APP,
    "TaskUnschedulableError": APP,
    "UnserializableException": APP,
    "UserCodeException": APP,
    "WorkerCrashedError": W,
}


def ray_exception_classes():
    return sorted(
        (name, cls)
        for name, cls in vars(rex).items()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__.startswith("ray")
    )


def instance_of(cls):
    """An instance without running a constructor whose signature varies by class."""
    exc = cls.__new__(cls)
    if issubclass(cls, rex.RayActorError):
        exc._actor_init_failed = False
        exc._preempted = False
    if issubclass(cls, rex.RayTaskError):
        exc.cause = RuntimeError("user code")
    return exc


def test_every_ray_exception_is_mapped():
    names = {name for name, _ in ray_exception_classes()}
    unmapped = names - EXPECTED.keys()
    assert not unmapped, f"classify these new Ray exceptions in failures.py: {sorted(unmapped)}"


@pytest.mark.parametrize(("name", "cls"), ray_exception_classes())
def test_ray_exception_classified_as_designed(name, cls):
    assert classify_failure(instance_of(cls)) is EXPECTED[name]


def test_real_constructed_exceptions():
    assert classify_failure(rex.WorkerCrashedError()) is W
    assert classify_failure(rex.NodeDiedError("node gone")) is N
    assert classify_failure(rex.GetTimeoutError("slow")) is T
    assert classify_failure(rex.TaskCancelledError()) is T
    assert classify_failure(rex.ActorDiedError()) is W
    assert classify_failure(rex.ActorUnavailableError("restarting", None)) is NET


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        (ValueError("bad input"), None),
        (ConnectionResetError("peer reset"), "network"),
        (TimeoutError("service slow"), "timeout"),
        (MemoryError("allocation failed"), "memory"),
        (rex.WorkerCrashedError(), None),  # a sub-task's crash, raised in the user's code
    ],
)
def test_user_code_exceptions_are_application_errors_whatever_their_type(cause, kind):
    """Raised inside the user's callable: the task's (APPLICATION_ERROR), with its kind
    kept for stats; never NETWORK_ERROR, TASK_TIMEOUT or OUT_OF_MEMORY."""
    wrapped = rex.RayTaskError("f", "tb", cause)
    assert classify_failure(wrapped) is APP
    assert classify_failure(wrapped.as_instanceof_cause()) is APP
    assert user_error_kind(wrapped) == kind
    assert user_error_kind(cause) == kind


def test_actor_died_variants():
    init_failed = rex.ActorDiedError(rex.RayTaskError("A.__init__", "tb", ValueError("x")))
    assert init_failed.actor_init_failed
    assert classify_failure(init_failed) is APP
    preempted = instance_of(rex.ActorDiedError)
    preempted._preempted = True
    assert classify_failure(preempted) is N


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), OOM),
        (ConnectionResetError(), NET),
        (TimeoutError(), T),
        (TaskTimeoutError(1.0, "f"), T),
        (ValueError(), APP),
        (KeyboardInterrupt(), APP),
    ],
)
def test_builtin_exceptions(exc, expected):
    assert classify_failure(exc) is expected


def test_failure_objects_pickle_and_json():
    event = FailureEvent(1.5, N, "gone", task_id="t", worker_id="w", attempt=2)
    assert pickle.loads(pickle.dumps(event)) == event
    assert FailureEvent.from_dict(event.to_dict()) == event
    hungry = FailureEvent(2.0, FailureType.OUT_OF_MEMORY, blame="task", memory_request=2.0**31)
    assert pickle.loads(pickle.dumps(hungry)) == hungry
    assert FailureEvent.from_dict(json.loads(json.dumps(hungry.to_dict()))) == hungry
    err = TaskFailedError("gave up", failure_type=T, attempts=3, events=[event])
    again = pickle.loads(pickle.dumps(err))
    assert (again.failure_type, again.attempts, again.events, str(again)) == (
        T,
        3,
        (event,),
        "gave up",
    )
    timeout = pickle.loads(pickle.dumps(TaskTimeoutError(2.0, "f")))
    assert timeout.timeout == 2.0 and "f" in str(timeout)
    node = pickle.loads(pickle.dumps(NodeFailedError("n1", "is dead")))
    assert (node.node_id, node.reason) == ("n1", "is dead") and "n1" in str(node)


def test_failure_type_parse():
    assert FailureType.parse("NODE_DIED") is N
    assert FailureType.parse("node_died") is N
    with pytest.raises(ValueError, match="pass one of"):
        FailureType.parse("meteor")
