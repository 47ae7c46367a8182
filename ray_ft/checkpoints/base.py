"""The CheckpointStore protocol shared by the disk and object-store backends."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

__all__ = ["CHECKPOINT_KEY_ENV", "CheckpointCorruptError", "CheckpointInfo", "CheckpointStore"]

CHECKPOINT_KEY_ENV = "RAY_FT_CHECKPOINT_KEY"


class CheckpointCorruptError(Exception):
    """A checkpoint is missing, partial, tampered with, or fails its checksum."""


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One stored checkpoint: its step, where it lives, when it was made, how big it is."""

    step: int
    path: str
    created_at: float
    size_bytes: int


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
        msg = f"step={step!r} is not valid; pass a non-negative int such as the generation"
        raise ValueError(msg)
    return step
