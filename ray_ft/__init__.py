"""ray_ft: fault tolerance for distributed optimization on Ray.

The pure core (config, failures, policy, breaker, manager, health, optim) is imported
eagerly and needs no cluster; the Ray layer (executor, manager actor, checkpoint stores
in the object store) is imported on first use so ``import ray_ft`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__version__ = "0.1.0"

_LAZY = {
    "CapacityError": "ray_ft.runtime.executor",
    "FaultTolerantActorPool": "ray_ft.runtime.pool",
    "FaultTolerantExecutor": "ray_ft.runtime.executor",
    "get_manager": "ray_ft.actors.manager_actor",
    "shutdown_manager": "ray_ft.actors.manager_actor",
    "ObjectStoreCheckpointStore": "ray_ft.checkpoints.object_store",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'ray_ft' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
