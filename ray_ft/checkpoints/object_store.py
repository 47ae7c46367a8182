"""ObjectStoreCheckpointStore: checkpoints in Ray's object store, owned by the manager actor.

The driver puts the state; the manager actor takes ownership (it re-puts the object), so
the checkpoint outlives the driver that saved it and a second driver can load it. It does
not outlive the cluster: use DiskCheckpointStore for that.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from ray_ft.checkpoints.base import CheckpointCorruptError, CheckpointInfo, check_step

__all__ = ["ObjectStoreCheckpointStore"]


class ObjectStoreCheckpointStore:
    """Checkpoints under ``key`` in the manager actor; keeps the newest ``keep_last``."""

    def __init__(self, key: str = "default", *, manager: Any = None, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            msg = f"keep_last={keep_last!r} is not valid; pass a positive int or None"
            raise ValueError(msg)
        if manager is None:
            from ray_ft.actors.manager_actor import get_manager

            manager = get_manager()
        self.key = key
        self.keep_last = keep_last
        self.manager = manager

    def save(self, state: Any, *, step: int) -> CheckpointInfo:
        """Put ``state`` and hand it to the manager actor."""
        step = check_step(step)
        ref = ray.put(state)
        size = _size_of(ref)
        meta = {"created_at": time.time(), "size_bytes": size}
        ray.get(self.manager.put_checkpoint.remote(self.key, step, [ref], meta))
        if self.keep_last is not None:
            for info in self.list()[: -self.keep_last]:
                self.delete(info.step)
        return CheckpointInfo(step, f"{self.key}/{step}", meta["created_at"], size)

    def load(self, step: int) -> Any:
        """The state at ``step``; CheckpointCorruptError when absent or lost."""
        step = check_step(step)
        try:
            (ref,) = ray.get(self.manager.get_checkpoint.remote(self.key, step))
            return ray.get(ref)
        except Exception as exc:
            msg = f"object-store checkpoint {self.key}/{step} cannot be loaded: {exc}"
            raise CheckpointCorruptError(msg) from exc

    def load_latest(self) -> Any | None:
        """The newest loadable checkpoint, or None."""
        for info in reversed(self.list()):
            try:
                return self.load(info.step)
            except CheckpointCorruptError:
                continue
        return None

    def list(self) -> list[CheckpointInfo]:
        """Stored checkpoints, oldest first."""
        entries = ray.get(self.manager.list_checkpoints.remote(self.key))
        return [
            CheckpointInfo(step, f"{self.key}/{step}", meta["created_at"], meta["size_bytes"])
            for step, meta in entries
        ]

    def delete(self, step: int) -> None:
        """Forget one checkpoint."""
        ray.get(self.manager.delete_checkpoint.remote(self.key, check_step(step)))


def _size_of(ref: Any) -> int:
    """Bytes the object takes in the store (0 when Ray cannot say)."""
    try:
        locations = ray.experimental.get_object_locations([ref])
        return int(locations[ref].get("object_size") or 0)
    except Exception:
        return 0
