"""Optimizers that follow the ask/tell protocol, and optimize() to drive them."""

from ray_ft.optim.base import BaseOptimizer
from ray_ft.optim.cmaes import CMAES
from ray_ft.optim.ga import GeneticAlgorithm
from ray_ft.optim.individual import Individual
from ray_ft.optim.run import GenerationReport, OptimizationResult, optimize

__all__ = [
    "CMAES",
    "BaseOptimizer",
    "GenerationReport",
    "GeneticAlgorithm",
    "Individual",
    "OptimizationResult",
    "optimize",
]
