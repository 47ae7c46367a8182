"""ObjectStoreCheckpointStore: checkpoints in Ray's object store, owned by the manager actor.

The driver puts the state; the manager actor takes ownership (it re-puts the object) and
keeps a copy on disk under its state folder, so the checkpoint outlives the driver that
saved it and the manager's own restarts, and a second driver can load it. It does not
outlive the cluster: use DiskCheckpointStore for that. Checkpoints belong to a run:
``optimize()`` binds the store to its run; a store made without ``run_id`` gets a fresh
run of its own, so two jobs never prune or overwrite each other's checkpoints (``runs()``
lists every run the manager holds).
"""

from __future__ import annotations

import time
from typing import Any

import ray

from ray_ft import raycompat
from ray_ft._errors import invalid
from ray_ft.checkpoints.base import (
    CheckpointCorruptError,
    CheckpointInfo,
    RunInfo,
    check_run_id,
    check_step,
    new_run_id,
)

__all__ = ["ObjectStoreCheckpointStore"]

_InfoList = list[CheckpointInfo]  # the class defines a method named list
_RunList = list[RunInfo]


class ObjectStoreCheckpointStore:
    """Checkpoints of one run in the manager actor; keeps the newest ``keep_last``.

    ``run_id`` (``key`` is its older name) names the run; without one the store gets a
    fresh run id of its own (``store.key``), never a shared default.
    """

    def __init__(
        self,
        key: str | None = None,
        *,
        manager: Any = None,
        keep_last: int | None = 3,
        run_id: str | None = None,
        fingerprint: str | None = None,
        describe: dict[str, Any] | None = None,
    ) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 1):
            raise invalid("keep_last", keep_last, "a positive int or None")
        if manager is None:
            from ray_ft.actors.manager_actor import get_manager

            manager = get_manager()
        named = run_id if run_id is not None else key
        self.run_id = new_run_id() if named is None else check_run_id(named)
        self.keep_last = keep_last
        self.manager = manager
        self.fingerprint = fingerprint
        self.describe = dict(describe or {})

    @property
    def key(self) -> str:
        """The run this store's checkpoints belong to."""
        return self.run_id

    def for_run(
        self,
        run_id: str,
        *,
        fingerprint: str | None = None,
        describe: dict[str, Any] | None = None,
    ) -> ObjectStoreCheckpointStore:
        """This store bound to one run."""
        return ObjectStoreCheckpointStore(
            manager=self.manager,
            keep_last=self.keep_last,
            run_id=run_id,
            fingerprint=fingerprint,
            describe=describe,
        )

    def save(self, state: Any, *, step: int) -> CheckpointInfo:
        """Put ``state`` and hand it to the manager actor (which also keeps it on disk)."""
        step = check_step(step)
        ref = ray.put(state)
        size = _size_of(ref)
        meta: dict[str, Any] = {
            "created_at": time.time(),
            "size_bytes": size,
            "fingerprint": self.fingerprint,
            "describe": self.describe,
        }
        ray.get(self.manager.put_checkpoint.remote(self.key, step, [ref], meta))
        if self.keep_last is not None:
            for info in self._infos(self.key)[: -self.keep_last]:
                ray.get(self.manager.delete_checkpoint.remote(self.key, info.step))
        return CheckpointInfo(step, f"{self.key}/{step}", meta["created_at"], size, self.key)

    def load(self, step: int) -> Any:
        """The state at ``step``; CheckpointCorruptError when absent or lost."""
        step = check_step(step)
        try:
            (ref,) = ray.get(self.manager.get_checkpoint.remote(self.key, step))
            try:
                return ray.get(ref)
            except ray.exceptions.ObjectLostError:  # the driver that put it ended: from disk
                (ref,) = ray.get(self.manager.get_checkpoint.remote(self.key, step, True))
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

    def list(self) -> _InfoList:
        """This run's checkpoints, oldest first."""
        return self._infos(self.key)

    def delete(self, step: int) -> None:
        """Forget one checkpoint of this store's run."""
        ray.get(self.manager.delete_checkpoint.remote(self.key, check_step(step)))

    def runs(self) -> _RunList:
        """Every run the manager holds checkpoints of, oldest activity first."""
        runs = []
        for run_id, steps in ray.get(self.manager.list_checkpoint_runs.remote()).items():
            if not steps:
                continue
            newest = steps[-1][1]
            runs.append(
                RunInfo(
                    run_id,
                    newest.get("fingerprint"),
                    tuple(s for s, _ in steps),
                    max(m["created_at"] for _, m in steps),
                    dict(newest.get("describe") or {}),
                )
            )
        return sorted(runs, key=lambda r: r.updated_at)

    def _infos(self, run_id: str) -> _InfoList:
        entries = ray.get(self.manager.list_checkpoints.remote(run_id))
        return [_info(run_id, step, meta) for step, meta in entries]


def _info(run_id: str, step: int, meta: dict[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(step, f"{run_id}/{step}", meta["created_at"], meta["size_bytes"], run_id)


def _size_of(ref: Any) -> int:
    """Bytes the object takes in the store (0 when Ray cannot say)."""
    return raycompat.object_size(ref)
