"""What the recovery test and its driver processes share."""

from __future__ import annotations

import time

import numpy as np

from ray_ft import CMAES, GeneticAlgorithm

CONFIG = {
    "retry_delay": 0.05,
    "max_retry_delay": 0.5,
    "max_retries": 12,
    "health_check_interval": 0.5,
    "probe_timeout": 2.0,
    "probe_failure_threshold": 3,
    "worker_failure_threshold": 1000,
}
DIM = 6


def slow_rastrigin(x) -> float:
    time.sleep(0.05)
    x = np.asarray(x)
    return float(10 * len(x) + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))


def make_optimizer(kind: str):
    if kind == "ga":
        return GeneticAlgorithm(DIM, (-5.12, 5.12), 16, seed=42)
    return CMAES(DIM, 2.0, 1.5, 12, seed=42, bounds=(-5.12, 5.12))
