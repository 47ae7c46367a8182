"""What the manager actor keeps for ObjectStoreCheckpointStore: objects it owns, on disk too.

Each checkpoint is held twice: as the object the driver put (borrowed: loads at memory
speed, no copy) and in a DiskCheckpointStore under the actor's state folder, written
before the save is acknowledged (so it outlives the driver, whose objects die with it, and
the actor's own restart: Ray restarts the manager by design, and an in-memory index would
be lost with it). When the object is gone (its driver ended, or after a restart) the
checkpoint is read back from disk and put again, now owned by the actor. Checkpoints are
kept per run: two jobs never prune or overwrite each other's.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from ray_ft.checkpoints.base import CheckpointCorruptError
from ray_ft.checkpoints.disk import DiskCheckpointStore

__all__ = ["CheckpointKeeper"]


class CheckpointKeeper:
    """Runs -> steps -> (object ref or None until reloaded, metadata); durable on disk."""

    def __init__(self, folder: str) -> None:
        # the actor's own private folder, written only by itself: pickled state a user's
        # optimizer needs may be read back
        self._disk = DiskCheckpointStore(folder, keep_last=None, allow_pickle=True)
        self._lock = threading.Lock()
        self._runs: dict[str, dict[int, tuple[Any, dict[str, Any]]]] = {}
        for run in self._disk.runs():
            bound = self._disk.for_run(run.run_id)
            steps: dict[int, tuple[Any, dict[str, Any]]] = {}
            for info in bound.list():
                meta = {
                    "created_at": info.created_at,
                    "size_bytes": info.size_bytes,
                    "fingerprint": run.fingerprint,
                    "describe": run.describe,
                }
                steps[info.step] = (None, meta)
            self._runs[run.run_id] = steps

    def put(self, run_id: str, step: int, ref: Any, meta: dict[str, Any]) -> None:
        """Own the object behind ``ref`` and write it to disk before answering."""
        state = ray.get(ref)  # arrays are views of the object store: no copy
        disk = self._disk.for_run(
            run_id, fingerprint=meta.get("fingerprint"), describe=meta.get("describe")
        )
        disk.save(state, step=step)
        with self._lock:
            self._runs.setdefault(run_id, {})[step] = (ref, dict(meta))

    def get(self, run_id: str, step: int, *, from_disk: bool = False) -> Any:
        """The object ref of one checkpoint, put back from disk after a restart, or when
        asked (``from_disk``: a caller found the driver's object gone before we had)."""
        with self._lock:
            entry = self._runs.get(run_id, {}).get(step)
        if entry is None:
            msg = f"no checkpoint at step {step} in run {run_id!r}"
            raise KeyError(msg)
        ref, meta = entry
        if ref is not None and (from_disk or not _alive(ref)):
            ref = None  # its driver ended: the object went with it
        if ref is None:
            try:
                state = self._disk.for_run(run_id).load(step)
            except CheckpointCorruptError as exc:
                msg = f"checkpoint {run_id}/{step} is lost: {exc}"
                raise KeyError(msg) from exc
            ref = ray.put(state)
            with self._lock:
                if step in self._runs.get(run_id, {}):
                    self._runs[run_id][step] = (ref, meta)
        return ref

    def steps(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Steps and metadata of one run, oldest first."""
        with self._lock:
            return sorted((s, dict(m)) for s, (_, m) in self._runs.get(run_id, {}).items())

    def runs(self) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """Every run's steps and metadata."""
        with self._lock:
            run_ids = list(self._runs)
        return {run_id: self.steps(run_id) for run_id in run_ids}

    def delete(self, run_id: str, step: int) -> None:
        """Forget one checkpoint, in memory and on disk."""
        with self._lock:
            steps = self._runs.get(run_id, {})
            steps.pop(step, None)
            if not steps:
                self._runs.pop(run_id, None)
        self._disk.for_run(run_id).delete(step)

    def counts(self) -> dict[str, int]:
        """Checkpoints held per run (for status)."""
        with self._lock:
            return {run_id: len(steps) for run_id, steps in self._runs.items()}


def _alive(ref: Any) -> bool:
    """The object can still be read (its owner, the driver that put it, lives)."""
    try:
        ray.get(ref, timeout=30)
    except Exception:
        return False
    return True
