"""The one place that knows which Ray is running: its private modules and what differs.

A driver runs its cluster's Ray release exactly, so ray_ft supports a range
(:data:`SUPPORTED`). Everything that depends on the release lives here, each with a
fallback: the session name, draining nodes and their deadlines, the autoscaler's cluster
config, resources per node, keeping an actor off nodes (``label_selector`` or a node-label
strategy), an object's size, and authentication errors. A capability a release lacks is
said once, in one log line, and ray_ft does without it. Nothing else in ray_ft imports
``ray._private`` or ``ray._raylet`` (a test holds it to that).
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import ray

__all__ = [
    "CAPABILITIES",
    "RAY_VERSION",
    "SUPPORTED",
    "avoid_nodes",
    "capabilities",
    "cluster_config",
    "drain_node",
    "draining_nodes",
    "is_authentication_error",
    "object_size",
    "resources_per_node",
    "session_name",
    "support_problem",
    "user_method",
    "warn_if_unsupported",
]

log = logging.getLogger(__name__)

#: the oldest and the newest Ray release (major, minor) this ray_ft is tested on
SUPPORTED: tuple[tuple[int, int], tuple[int, int]] = ((2, 44), (2, 60))


def _parse(version: str) -> tuple[int, int, int]:
    major, minor, patch = [*(int(p) for p in re.findall(r"\d+", version)[:3]), 0, 0, 0][:3]
    return major, minor, patch


#: the running Ray's release as (major, minor, patch)
RAY_VERSION: tuple[int, int, int] = _parse(ray.__version__)

#: what differs between releases, and what ray_ft does where one lacks it
CAPABILITIES: dict[str, str] = {
    "session_name": "the manager keys its state by session (2.60+ asks the runtime context; "
    "older releases read it from the worker's node)",
    "label_selector": "an actor pool keeps new actors off excluded nodes with label_selector "
    "(2.50+); older releases use a node-label scheduling strategy instead",
    "draining_nodes": "drain notices with deadlines (preemption): a copy starts at the notice; "
    "without them a drained node's departure is a node death charged to nobody",
    "cluster_config": "the autoscaler's node types from the GCS (autoscaler v2, KubeRay); "
    "without it the monitor's --autoscaling-config file on the head is read",
    "drain_node_client": "GcsClient.drain_node (2.60+; tests drain through `ray drain-node` "
    "on older releases)",
    "authentication": "token authentication (2.60+): `ray-ft status` names a refused client",
}


def support_problem(version: tuple[int, int, int] = RAY_VERSION) -> str | None:
    """What is wrong with this Ray release for ray_ft, or None inside the tested range."""
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED
    if (lo_major, lo_minor) <= version[:2] <= (hi_major, hi_minor):
        return None
    where = "older" if version[:2] < (lo_major, lo_minor) else "newer"
    return (
        f"Ray {'.'.join(map(str, version))} is {where} than the releases ray_ft is tested on "
        f"({lo_major}.{lo_minor} to {hi_major}.{hi_minor}); it may work, but run a ray_ft "
        "release that lists your cluster's Ray, or pin the cluster's Ray within that range"
    )


@functools.cache
def warn_if_unsupported() -> str | None:
    """Warn once per process (RuntimeWarning) when the running Ray is outside the range."""
    problem = support_problem()
    if problem is not None:
        warnings.warn(problem, RuntimeWarning, stacklevel=3)
    return problem


@functools.cache
def _without(capability: str) -> None:
    """Say once per process what ray_ft does without a capability this Ray lacks."""
    log.info("Ray %s: %s", ray.__version__, CAPABILITIES[capability])


def capabilities() -> dict[str, bool]:
    """Which of :data:`CAPABILITIES` the running Ray has (for ``ray-ft status``, tests)."""
    state = _state()
    return {
        "session_name": hasattr(ray.get_runtime_context(), "get_session_name")
        if ray.is_initialized()
        else hasattr(ray.runtime_context.RuntimeContext, "get_session_name"),
        "label_selector": _has_label_selector(),
        "draining_nodes": state is not None and hasattr(state, "get_draining_nodes"),
        "cluster_config": state is not None and hasattr(state, "get_cluster_config"),
        "drain_node_client": _gcs_client_class() is not None
        and hasattr(_gcs_client_class(), "drain_node"),
        "authentication": hasattr(ray.exceptions, "AuthenticationError"),
    }


# -- the session ---------------------------------------------------------------------------


def session_name() -> str:
    """The Ray session's name (``session_<date>_<pid>``): new with every fresh cluster."""
    context = ray.get_runtime_context()
    getter = getattr(context, "get_session_name", None)
    if getter is not None:
        return str(getter())
    _without("session_name")
    try:
        from ray._private import worker

        node = getattr(worker.global_worker, "node", None)
        if node is not None and getattr(node, "session_name", None):
            return str(node.session_name)
    except Exception:  # a release without the node object: ask the GCS
        log.debug("no session name on the worker's node", exc_info=True)
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        value = _internal_kv_get("session_name", namespace="session")
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:
        log.debug("no session name in the GCS's internal KV", exc_info=True)
    return "unknown_session"


# -- the GCS's tables ----------------------------------------------------------------------


def _state() -> Any:
    try:
        from ray._private import state

        return state.state
    except Exception:
        return None


def draining_nodes() -> dict[str, float] | None:
    """Draining nodes -> deadline in wall seconds (0: none); None where this Ray cannot
    say (the caller treats a drained node's departure as today's node death)."""
    state = _state()
    getter = getattr(state, "get_draining_nodes", None)
    if getter is None:
        _without("draining_nodes")
        return None
    return {str(node): deadline_ms / 1000.0 for node, deadline_ms in getter().items()}


def cluster_config() -> Any:
    """The autoscaler's cluster config from the GCS (autoscaler v2), or None."""
    getter = getattr(_state(), "get_cluster_config", None)
    if getter is None:
        _without("cluster_config")
        return None
    return getter()


def resources_per_node() -> tuple[dict[str, Any], dict[str, Any]]:
    """(total, available) resources by node id, as the autoscaler sees them."""
    state = _state()
    return state.total_resources_per_node(), state.available_resources_per_node()


# -- placement -----------------------------------------------------------------------------


@functools.cache
def _has_label_selector() -> bool:
    return RAY_VERSION[:2] >= (2, 50)


def avoid_nodes(options: dict[str, Any], node_ids: Iterable[str]) -> dict[str, Any]:
    """Actor options that keep a new actor off ``node_ids`` (none: ``options`` unchanged).

    ``label_selector`` where Ray has it; else a hard node-label strategy on the node-id
    label, unless the caller chose its own scheduling strategy,
    which is then left alone (said once).
    """
    excluded = sorted(node_ids)
    if not excluded:
        return options
    if _has_label_selector():
        return {**options, "label_selector": {"ray.io/node-id": f"!in({','.join(excluded)})"}}
    _without("label_selector")
    if "scheduling_strategy" in options:
        return options
    from ray.util.scheduling_strategies import NodeLabelSchedulingStrategy, NotIn

    # the node-id label was ray.io/node_id before it became ray.io/node-id; NotIn holds
    # on a node without the label, so naming both keeps every release right
    strategy = NodeLabelSchedulingStrategy(
        hard={key: NotIn(*excluded) for key in ("ray.io/node_id", "ray.io/node-id")}
    )
    return {**options, "scheduling_strategy": strategy}


def user_method(method: Any) -> Any:
    """The user's own function under Ray's tracing shim on an actor class (its first
    parameter is ``self``, so keywords named ``self`` would clash). Ray 2.60 marks the shim;
    older releases only wrap it (``functools.wraps``) from ``ray/util/tracing``."""
    inner = getattr(method, "__wrapped__", None)
    if inner is None:
        return method
    if getattr(method, "__ray_tracing_wrapped__", False):
        return inner
    code = getattr(method, "__code__", None)
    where = getattr(code, "co_filename", "").replace("\\", "/")
    return inner if where.endswith("ray/util/tracing/tracing_helper.py") else method


def object_size(ref: Any) -> int:
    """Bytes an object takes in the store (0 when Ray cannot say)."""
    try:
        locations = ray.experimental.get_object_locations([ref])
        return int(locations[ref].get("object_size") or 0)
    except Exception:
        return 0


# -- errors --------------------------------------------------------------------------------


def is_authentication_error(exc: BaseException) -> bool:
    """A cluster refused this client (token authentication, Ray 2.60's ``ray start``)."""
    auth = getattr(ray.exceptions, "AuthenticationError", None)
    if auth is not None and isinstance(exc, auth):
        return True
    text = str(exc).lower()
    return (
        type(exc).__name__ == "AuthenticationError"
        or "unauthenticated" in text
        or ("auth" in text and "token" in text)
    )


# -- draining a node (operators and tests) -------------------------------------------------


def _gcs_client_class() -> Any:
    try:
        from ray import _raylet

        return getattr(_raylet, "GcsClient", None)
    except Exception:
        return None


def drain_node(gcs_address: str, node_id: str, reason: str, deadline_s: float) -> None:
    """Drain a node with a deadline (``reason``: "preemption" or "idle_termination"), as a
    cloud's preemption notice or the autoscaler would: GcsClient.drain_node where Ray has
    it, else the ``ray drain-node`` CLI. Raises RuntimeError when Ray refuses."""
    import time

    client_class = _gcs_client_class()
    full = f"DRAIN_NODE_REASON_{reason.upper()}"
    if client_class is not None and hasattr(client_class, "drain_node"):
        from ray.core.generated import autoscaler_pb2

        code = autoscaler_pb2.DrainNodeReason.Value(full)  # type: ignore[attr-defined]
        accepted, why = client_class(address=gcs_address).drain_node(
            node_id, code, "ray_ft drain", int((time.time() + deadline_s) * 1000)
        )
        if not accepted:
            msg = f"Ray refused to drain node {node_id}: {why}"
            raise RuntimeError(msg)
        return
    _without("drain_node_client")
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "drain-node",
        "--address",
        gcs_address,
        "--node-id",
        node_id,
        "--reason",
        full,
        "--reason-message",
        "ray_ft drain",
        "--deadline-remaining-seconds",
        str(max(1, round(deadline_s))),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        msg = f"Ray refused to drain node {node_id}: {(done.stderr or done.stdout).strip()}"
        raise RuntimeError(msg)
