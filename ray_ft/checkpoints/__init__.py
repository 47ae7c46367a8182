"""Checkpoint stores: on disk (durable) and in the object store (survives the driver)."""

from ray_ft.checkpoints.base import CheckpointCorruptError, CheckpointInfo, CheckpointStore
from ray_ft.checkpoints.disk import DiskCheckpointStore

__all__ = [
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CheckpointStore",
    "DiskCheckpointStore",
    "ObjectStoreCheckpointStore",
]


def __getattr__(name: str) -> object:
    if name == "ObjectStoreCheckpointStore":
        from ray_ft.runtime.object_store_checkpoints import ObjectStoreCheckpointStore

        return ObjectStoreCheckpointStore
    msg = f"module 'ray_ft.checkpoints' has no attribute {name!r}"
    raise AttributeError(msg)
