"""The optimizer checkpoint format: what optimize() saves, and how it is restored.

A checkpoint is the seed's dict (``generation``, ``optimizer_state``, ``population`` as
Individual.to_dict() entries) plus what an exact resume needs (history, evaluation counts)
and ``format_version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray_ft.optim.base import BaseOptimizer
from ray_ft.optim.individual import Individual

__all__ = ["CHECKPOINT_FORMAT_VERSION", "make_checkpoint", "restore_checkpoint"]

CHECKPOINT_FORMAT_VERSION = 1


def make_checkpoint(generation: int, optimizer: BaseOptimizer, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of ``optimizer`` after ``generation`` generations."""
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "generation": generation,
        "optimizer_state": optimizer.get_state(),
        "population": [i.to_dict() for i in optimizer.population],
        **extra,
    }


def restore_checkpoint(checkpoint: Mapping[str, Any], optimizer: BaseOptimizer) -> int:
    """Restore optimizer state and population; return the generation to resume from."""
    missing = [k for k in ("generation", "optimizer_state", "population") if k not in checkpoint]
    if missing:
        msg = (
            f"checkpoint lacks {', '.join(missing)}; pass a dict saved by optimize() "
            "(generation, optimizer_state, population)"
        )
        raise ValueError(msg)
    version = checkpoint.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if version > CHECKPOINT_FORMAT_VERSION:
        msg = (
            f"checkpoint format_version={version} is newer than this ray_ft understands "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade ray_ft to load it"
        )
        raise ValueError(msg)
    optimizer.load_state(checkpoint["optimizer_state"])
    optimizer.population = [Individual.from_dict(d) for d in checkpoint["population"]]
    return int(checkpoint["generation"])
