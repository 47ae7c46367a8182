"""The optimizer checkpoint format: what optimize() saves, how it is restored, whose it is.

A checkpoint is the seed's dict (``generation``, ``optimizer_state``, ``population`` as
Individual.to_dict() entries) plus what an exact resume needs (history, evaluation counts)
and ``format_version``. It belongs to a run, named by a run id and a fingerprint of what
makes a resume exact (optimizer class, its settings and seed, the objective's name):
``resume=True`` continues only a run with the same fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ray_ft.checkpoints.base import CheckpointStore, RunInfo, new_run_id
from ray_ft.optim.base import BaseOptimizer
from ray_ft.optim.individual import Individual

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "make_checkpoint",
    "open_run",
    "restore_checkpoint",
    "run_identity",
]

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


def run_identity(
    objective: Callable[..., Any], optimizer: BaseOptimizer
) -> tuple[str, dict[str, Any]]:
    """``(fingerprint, description)`` of a run: what makes its resume exact."""
    identity = getattr(optimizer, "identity", None)
    settings = (
        identity()
        if callable(identity)
        else {"seed": getattr(optimizer, "seed", None), "dim": getattr(optimizer, "dim", None)}
    )
    kind = type(optimizer)
    body = {
        "optimizer": f"{kind.__module__}.{kind.__qualname__}",
        "objective": _qualified_name(objective),
        "settings": settings,
    }
    text = json.dumps(body, sort_keys=True, default=repr)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    describe = {
        "optimizer": kind.__qualname__,
        "objective": body["objective"],
        **{k: settings.get(k) for k in ("seed", "dim", "population_size") if k in settings},
    }
    return fingerprint, json.loads(json.dumps(describe, default=repr))


def open_run(
    store: CheckpointStore,
    objective: Callable[..., Any],
    optimizer: BaseOptimizer,
    *,
    resume: bool,
) -> tuple[CheckpointStore, Mapping[str, Any] | None, str | None]:
    """The store bound to this run, the checkpoint to resume from (or None), and the run id.

    With ``resume`` the newest run of the same fingerprint continues; a folder whose runs
    are all of other settings is refused (resuming one would give another run's answer).
    A new run gets a fresh id, so it never prunes or overwrites another run's checkpoints.
    """
    fingerprint, describe = run_identity(objective, optimizer)
    runs_of = getattr(store, "runs", None)
    for_run = getattr(store, "for_run", None)
    if runs_of is None or for_run is None:  # a store of the bare protocol: no runs
        return store, (store.load_latest() if resume else None), None
    runs: list[RunInfo] = runs_of()
    if resume and runs:
        matching = [run for run in runs if run.fingerprint == fingerprint]
        for run in reversed(matching):
            bound = for_run(run.run_id, fingerprint=fingerprint, describe=describe)
            checkpoint = bound.load_latest()
            if checkpoint is not None:
                return bound, checkpoint, run.run_id
        if not matching:
            mine = ", ".join(f"{k}={v}" for k, v in describe.items())
            location = getattr(store, "root", None) or getattr(store, "manager", "the store")
            msg = (
                f"resume=True, but the checkpoints in {location} are another run's: its "
                f"newest is {runs[-1].summary()}; this run is ({mine}). Resuming it would "
                "return that run's answer. Pass resume=False to start a new run beside it "
                "(its checkpoints are kept), or give this run another checkpoint folder"
            )
            raise ValueError(msg)
    run_id = new_run_id()
    return for_run(run_id, fingerprint=fingerprint, describe=describe), None, run_id


def _qualified_name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{name}"
