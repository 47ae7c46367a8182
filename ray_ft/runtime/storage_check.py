"""The storage setting checked against the cluster a driver runs on.

A bad setting (a scheme pyarrow does not know, no pyarrow, no credentials) fails when the
executor is made, before any work runs. Storage that only one machine holds, on a cluster
of several machines, gets one WARNING per process naming the node, what would be lost with
it, and the setting (checkpoints and the manager's state must outlive a replaced head).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

import ray

from ray_ft.checkpoints.storage import (
    STORAGE_ENV,
    is_uri,
    node_local_mount,
    open_storage,
    storage_root,
)
from ray_ft.nodes import alive_nodes

__all__ = ["check_storage_setting", "warn_if_node_local"]

log = logging.getLogger("ray_ft.storage")

_warned: set[str] = set()  # locations this process has warned about
_lock = threading.Lock()


def check_storage_setting(storage: str | None) -> None:
    """Open the storage in force when one is set (``storage``, else ``$RAY_FT_STORAGE``),
    or raise a ValueError naming the setting and the fix. Nothing there is touched."""
    chosen = storage or os.environ.get(STORAGE_ENV)
    if not chosen:
        return  # ~/ray_ft, made when first written
    name = "FTConfig.storage" if storage else STORAGE_ENV
    open_storage(storage_root(chosen), setting=name)


def machines() -> set[str]:
    """The distinct addresses of Ray's alive nodes (several nodes on one machine are one)."""
    return {str(n.get("NodeManagerAddress")) for n in alive_nodes().values()}


def this_node() -> str:
    """This process's node: its address and the start of its Ray node id."""
    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:12]})"


def warn_if_node_local(
    location: str,
    *,
    storage: str | None = None,
    hosts: Callable[[], set[str]] = machines,
    node: Callable[[], str] | None = None,
    partitions: Iterable[tuple[str, str]] | None = None,
) -> str | None:
    """Warn once when ``location`` is on a disk of this machine only and the cluster spans
    several machines; the message, or None. A location under the storage in force is
    judged as the storage (one warning for the checkpoints and the manager's state)."""
    root = storage_root(storage)
    within = not is_uri(location) and (location == root or location.startswith(root + os.sep))
    judged = root if within else location
    with _lock:
        if judged in _warned:
            return None
        mount = node_local_mount(judged, partitions)
        if mount is None:
            return None
        spread = hosts()
        if len(spread) < 2:
            return None
        _warned.add(judged)
    what = "checkpoints of relative folders and the manager's state" if within else "checkpoints"
    msg = (
        f"ray_ft {what} go to {judged}, a disk of node {(node or this_node)()} only "
        f"(mount {mount}), on a cluster of {len(spread)} "
        "machines: they are lost with that node (a replaced head pod, a new `ray up` head). "
        f"Set {STORAGE_ENV} (or FTConfig(storage=...)) to a bucket URI such as "
        "s3://bucket/ray_ft or a shared mount"
    )
    log.warning(msg)
    return msg
