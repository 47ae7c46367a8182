"""The CheckpointStore protocol shared by the disk and object-store backends."""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from typing import Any, Protocol, runtime_checkable

from ray_ft._errors import invalid

__all__ = [
    "CHECKPOINT_KEY_ENV",
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CheckpointStore",
    "PickledCheckpointError",
    "RunInfo",
    "check_run_id",
    "new_run_id",
]

CHECKPOINT_KEY_ENV = "RAY_FT_CHECKPOINT_KEY"


class CheckpointCorruptError(Exception):
    """A checkpoint is missing, partial, tampered with, or fails its checksum."""


class PickledCheckpointError(CheckpointCorruptError):
    """A checkpoint holds pickled state and loading it would run code: it needs a valid
    signature (RAY_FT_CHECKPOINT_KEY) or the store's ``allow_pickle=True``."""


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One stored checkpoint: its step, where it lives, when it was made, how big it is."""

    step: int
    path: str
    created_at: float
    size_bytes: int
    run_id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RunInfo:
    """One run's checkpoints: its id, the fingerprint of what makes its resume exact,
    its steps (oldest first), when it last saved, and a readable description."""

    run_id: str
    fingerprint: str | None
    steps: tuple[int, ...]
    updated_at: float
    describe: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line for messages and the CLI."""
        parts = [f"{k}={v}" for k, v in self.describe.items() if k != "settings"]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"run {self.run_id}{detail}, steps {list(self.steps)}"


@runtime_checkable
class CheckpointStore(Protocol):
    """Save and load whole states by step number."""

    def save(self, state: Any, *, step: int) -> CheckpointInfo:
        """Store ``state`` durably as checkpoint ``step`` (replacing one at that step)."""
        ...

    def load(self, step: int) -> Any:
        """The state saved at ``step``; CheckpointCorruptError if it is damaged or absent."""
        ...

    def load_latest(self) -> Any | None:
        """The newest valid state, skipping damaged ones with a warning; None if none."""
        ...

    def list(self) -> list[CheckpointInfo]:
        """Stored checkpoints, oldest first."""
        ...

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (no error if it is absent)."""
        ...


def check_step(step: Any) -> int:
    """Steps are non-negative integers: they name folders and must not escape the root."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise invalid("step", step, "a non-negative int such as the generation")
    return step


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_run_id(run_id: Any) -> str:
    """Run ids name folders and keys: 1-64 letters, digits, '_', '.' or '-'."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise invalid("run_id", run_id, "1-64 letters, digits, '_', '.' or '-' (it names a folder)")
    return run_id


def new_run_id() -> str:
    """A fresh run id: when it started, and a random suffix (ids sort by start)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
