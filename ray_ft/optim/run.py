"""optimize(): drive an ask/tell optimizer through an executor, checkpointing as it goes.

Results are told in ask order, never completion order, and checkpoints hold the whole
optimizer state (RNG streams included), so a run with faults, a resumed run and a clean
run with the same seed reach the identical result.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

from ray_ft._errors import invalid
from ray_ft.checkpoints.base import CheckpointStore
from ray_ft.failures import TaskFailedError
from ray_ft.optim.base import BaseOptimizer
from ray_ft.optim.checkpoint import make_checkpoint, open_run, restore_checkpoint
from ray_ft.optim.individual import Individual

__all__ = ["GenerationReport", "OptimizationResult", "optimize"]

log = logging.getLogger(__name__)

_ON_EXHAUSTED = ("penalize", "raise")


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationReport:
    """What the progress callback receives after each generation."""

    generation: int
    generations: int
    best_fitness: float | None
    evaluations: int
    failed_evaluations: int
    checkpointed: bool


@dataclasses.dataclass(slots=True)
class OptimizationResult:
    """The outcome: best individual, generations done, best-so-far history, counts."""

    best: Individual | None
    generation: int
    history: list[float]
    evaluations: int
    failed_evaluations: list[dict[str, Any]]
    failures: dict[str, int]
    resumed_from: int | None = None
    run_id: str | None = None  # the run its checkpoints belong to


def optimize(
    objective: Callable[..., float],
    optimizer: BaseOptimizer,
    *,
    generations: int,
    executor: cf.Executor | None = None,
    checkpoint_store: CheckpointStore | None = None,
    checkpoint_interval: int | None = None,
    resume: bool = True,
    on_exhausted: str = "penalize",
    progress: Callable[[GenerationReport], None] | None = None,
) -> OptimizationResult:
    """Minimize ``objective(genome)`` for ``generations`` generations.

    ``executor``: where evaluations run (a FaultTolerantExecutor; locally when None). A
    FaultTolerantExecutor backs up straggling evaluations unless its config sets
    ``speculation`` (each generation waits for its slowest evaluation).
    ``checkpoint_interval``: generations between checkpoints (default: the executor's
    FTConfig.checkpoint_interval, else 10); the last generation is always checkpointed.
    ``on_exhausted``: "penalize" gives an evaluation that exhausted its retries +inf
    fitness and lists it in failed_evaluations; "raise" checkpoints, then raises.
    """
    if on_exhausted not in _ON_EXHAUSTED:
        raise invalid("on_exhausted", on_exhausted, "'penalize' or 'raise'")
    if generations < 0:
        raise invalid("generations", generations, "a count >= 0")
    interval = checkpoint_interval or _default_interval(executor)
    if interval < 1:
        raise invalid("checkpoint_interval", interval, ">= 1")

    start, history, evaluations = 0, [], 0
    failed: list[dict[str, Any]] = []
    failures: dict[str, int] = {}
    resumed_from = run_id = None
    if checkpoint_store is not None:
        checkpoint_store = _under_storage(checkpoint_store, executor)
        checkpoint_store, checkpoint, run_id = open_run(
            checkpoint_store, objective, optimizer, resume=resume
        )
        _say_where(checkpoint_store, run_id, interval, executor)
        if checkpoint is not None:
            start = restore_checkpoint(checkpoint, optimizer)
            history = list(checkpoint.get("history", []))
            evaluations = int(checkpoint.get("evaluations", 0))
            failed = list(checkpoint.get("failed_evaluations", []))
            failures = dict(checkpoint.get("failures", {}))
            resumed_from = start
            if start >= generations:
                log.info(
                    "run %s already finished (generation %d of %d): returning its result "
                    "without evaluating; pass resume=False to run it again",
                    run_id,
                    start,
                    generations,
                )
            else:
                log.info("resumed run %s from the checkpoint of generation %d", run_id, start)

    def save(generation: int) -> None:
        if checkpoint_store is None:
            return
        state = make_checkpoint(
            generation,
            optimizer,
            history=list(history),
            evaluations=evaluations,
            failed_evaluations=list(failed),
            failures=dict(failures),
        )
        checkpoint_store.save(state, step=generation)

    for generation in range(start, generations):
        candidates = optimizer.ask()
        fitness = _evaluate(objective, candidates, executor)
        for ind, outcome in zip(candidates, fitness):
            if isinstance(outcome, TaskFailedError):
                kind = outcome.failure_type.value
                failures[kind] = failures.get(kind, 0) + 1
                failed.append(
                    {
                        "generation": generation,
                        "id": ind.id,
                        "failure_type": kind,
                        "attempts": outcome.attempts,
                    }
                )
                if on_exhausted == "raise":
                    save(generation)
                    raise outcome
                ind.fitness = math.inf
            else:
                ind.fitness = outcome
        optimizer.tell(candidates)
        evaluations += len(candidates)
        best = optimizer.best
        history.append(math.inf if best is None or best.fitness is None else best.fitness)
        done = generation + 1
        checkpointed = checkpoint_store is not None and (
            done % interval == 0 or done == generations
        )
        if checkpointed:
            save(done)
        if progress is not None:
            progress(
                GenerationReport(
                    done, generations, history[-1], evaluations, len(failed), checkpointed
                )
            )

    return OptimizationResult(
        best=optimizer.best,
        generation=max(start, generations),
        history=history,
        evaluations=evaluations,
        failed_evaluations=failed,
        failures=failures,
        resumed_from=resumed_from,
        run_id=run_id,
    )


def _evaluate(
    objective: Callable[..., float],
    candidates: list[Individual],
    executor: cf.Executor | None,
) -> list[float | TaskFailedError]:
    """Fitness of each candidate in ask order; exhausted retries come back as the error."""
    if executor is None:
        return [float(objective(c.genome)) for c in candidates]
    batch = getattr(executor, "for_generations", None)  # a FaultTolerantExecutor's
    runner = batch() if batch is not None else executor
    futures = [runner.submit(objective, c.genome) for c in candidates]
    outcomes: list[float | TaskFailedError] = []
    for future in futures:
        try:
            outcomes.append(float(future.result()))
        except TaskFailedError as exc:
            outcomes.append(exc)
    return outcomes


def _under_storage(store: CheckpointStore, executor: cf.Executor | None) -> CheckpointStore:
    """A store made with a relative folder goes under the executor's ``FTConfig.storage``."""
    storage = getattr(getattr(executor, "config", None), "storage", None)
    rebind = getattr(store, "with_storage", None)
    return rebind(storage) if storage is not None and rebind is not None else store


def _say_where(
    store: CheckpointStore, run_id: str | None, interval: int, executor: cf.Executor | None
) -> None:
    """Log once where the run's checkpoints go; warn if one machine's disk holds them on a
    cluster of several (through the executor, which knows the cluster)."""
    location = getattr(store, "root", None)
    if location is None:
        return
    log.info("run %s: checkpoints every %d generations in %s", run_id, interval, location)
    check = getattr(executor, "check_storage", None)
    if check is not None:
        check(str(location))


def _default_interval(executor: cf.Executor | None) -> int:
    config = getattr(executor, "config", None)
    return int(getattr(config, "checkpoint_interval", 10))
