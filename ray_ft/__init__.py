"""ray_ft: fault tolerance for distributed optimization on Ray.

Every public name is imported on first use, so ``import ray_ft`` stays cheap: a health
probe or the manager actor (new Ray worker processes on a cold cluster) loads only the
modules it runs, not numpy, the optimizers or the checkpoint stores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "BaseOptimizer": "ray_ft.optim",
    "BreakerState": "ray_ft.manager.breaker",
    "CMAES": "ray_ft.optim",
    "CheckpointCorruptError": "ray_ft.checkpoints",
    "CheckpointInfo": "ray_ft.checkpoints",
    "CircuitBreaker": "ray_ft.manager.breaker",
    "DiskCheckpointStore": "ray_ft.checkpoints",
    "FTConfig": "ray_ft.config",
    "FailureEvent": "ray_ft.failures",
    "FailureType": "ray_ft.failures",
    "FaultToleranceManager": "ray_ft.manager.state",
    "GenerationReport": "ray_ft.optim",
    "GeneticAlgorithm": "ray_ft.optim",
    "HealthMonitor": "ray_ft.health.monitor",
    "HealthReport": "ray_ft.health.monitor",
    "HealthThresholds": "ray_ft.health.monitor",
    "Individual": "ray_ft.optim",
    "OptimizationResult": "ray_ft.optim",
    "RetryDecision": "ray_ft.core.retry",
    "RetryPolicy": "ray_ft.core.retry",
    "Task": "ray_ft.manager.state",
    "TaskFailedError": "ray_ft.failures",
    "TaskTimeoutError": "ray_ft.failures",
    "WorkerInfo": "ray_ft.manager.state",
    "classify_failure": "ray_ft.failures",
    "optimize": "ray_ft.optim",
    "CapacityError": "ray_ft.runtime.executor",
    "FaultTolerantActorPool": "ray_ft.runtime.pool",
    "FaultTolerantExecutor": "ray_ft.runtime.executor",
    "get_manager": "ray_ft.actors.manager_actor",
    "shutdown_manager": "ray_ft.actors.manager_actor",
    "ObjectStoreCheckpointStore": "ray_ft.runtime.object_store_checkpoints",
}

__all__ = [
    "CMAES",
    "BaseOptimizer",
    "BreakerState",
    "CapacityError",
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CircuitBreaker",
    "DiskCheckpointStore",
    "FTConfig",
    "FailureEvent",
    "FailureType",
    "FaultToleranceManager",
    "FaultTolerantActorPool",
    "FaultTolerantExecutor",
    "GenerationReport",
    "GeneticAlgorithm",
    "HealthMonitor",
    "HealthReport",
    "HealthThresholds",
    "Individual",
    "ObjectStoreCheckpointStore",
    "OptimizationResult",
    "RetryDecision",
    "RetryPolicy",
    "Task",
    "TaskFailedError",
    "TaskTimeoutError",
    "WorkerInfo",
    "classify_failure",
    "get_manager",
    "optimize",
    "shutdown_manager",
]


if TYPE_CHECKING:  # the names as type checkers and editors see them
    from ray_ft.checkpoints import CheckpointCorruptError, CheckpointInfo, DiskCheckpointStore
    from ray_ft.config import FTConfig
    from ray_ft.core.retry import RetryDecision, RetryPolicy
    from ray_ft.failures import (
        FailureEvent,
        FailureType,
        TaskFailedError,
        TaskTimeoutError,
        classify_failure,
    )
    from ray_ft.health.monitor import HealthMonitor, HealthReport, HealthThresholds
    from ray_ft.manager.breaker import BreakerState, CircuitBreaker
    from ray_ft.manager.state import FaultToleranceManager, Task, WorkerInfo
    from ray_ft.optim import (
        CMAES,
        BaseOptimizer,
        GenerationReport,
        GeneticAlgorithm,
        Individual,
        OptimizationResult,
        optimize,
    )


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'ray_ft' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
