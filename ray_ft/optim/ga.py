"""GeneticAlgorithm: a real-valued GA whose every random draw comes from its own Generator.

Tournament selection, blend (BLX-alpha) or uniform crossover, Gaussian mutation, elitism.
Minimization. The state (generator included) round-trips through get_state/load_state,
so a resumed run draws exactly the numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ray_ft._errors import invalid
from ray_ft.optim.base import check_state
from ray_ft.optim.individual import Individual

__all__ = ["GeneticAlgorithm"]

_CROSSOVERS = ("blend", "uniform")


class GeneticAlgorithm:
    """Minimize over a box: ``ask()`` candidates, ``tell()`` them back evaluated."""

    def __init__(
        self,
        dim: int,
        bounds: tuple[ArrayLike, ArrayLike],
        population_size: int = 32,
        *,
        seed: int | None = None,
        tournament_size: int = 3,
        crossover: str = "blend",
        crossover_rate: float = 0.9,
        blend_alpha: float = 0.5,
        mutation_rate: float = 0.2,
        mutation_sigma: float = 0.1,
        mutation_decay: float = 0.95,
        min_mutation_sigma: float = 1e-5,
        elitism: int = 2,
    ) -> None:
        if dim < 1:
            raise invalid("dim", dim, "the number of variables (>= 1)")
        low = np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), (dim,)).copy()
        high = np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), (dim,)).copy()
        if not np.all(high > low):
            msg = "bounds must be (low, high) with high > low in every dimension"
            raise ValueError(msg)
        if population_size < 2:
            msg = f"population_size={population_size!r} is too small; pass at least 2"
            raise ValueError(msg)
        if not 0 <= elitism < population_size:
            raise invalid("elitism", elitism, "0 <= elitism < population_size")
        if crossover not in _CROSSOVERS:
            raise invalid("crossover", crossover, f"one of {', '.join(_CROSSOVERS)}")
        if tournament_size < 1:
            raise invalid("tournament_size", tournament_size, ">= 1")
        self.dim = dim
        self.low, self.high = low, high
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover = crossover
        self.crossover_rate = crossover_rate
        self.blend_alpha = blend_alpha
        self.mutation_rate = mutation_rate
        self.mutation_sigma = mutation_sigma
        self.mutation_decay = mutation_decay
        self.min_mutation_sigma = min_mutation_sigma
        self.elitism = elitism
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.generation = 0
        self.population: list[Individual] = []
        self._best: Individual | None = None
        self._elites: list[Individual] = []

    # -- ask / tell ----------------------------------------------------------------------

    def ask(self) -> list[Individual]:
        """New candidates: a random population first, then offspring of the evaluated one."""
        if not self.population:
            genomes = self.rng.uniform(self.low, self.high, size=(self.population_size, self.dim))
            self._elites = []
            return [self._new(g) for g in genomes]
        ranked = sorted(self.population, key=_fitness_key)
        self._elites = ranked[: self.elitism]
        count = self.population_size - len(self._elites)
        return [self._new(g) for g in self._offspring(count)]

    def tell(self, individuals: Sequence[Individual]) -> None:
        """Take evaluated candidates (in ask order); they and the elites form the population."""
        for ind in individuals:
            if ind.fitness is None:
                msg = f"individual {ind.id} has no fitness; evaluate every asked individual"
                raise ValueError(msg)
        self.population = [*self._elites, *individuals]
        for ind in individuals:
            if self._best is None or _fitness_key(ind) < _fitness_key(self._best):
                self._best = ind
        self.generation += 1

    @property
    def best(self) -> Individual | None:
        """The lowest-fitness individual told so far."""
        return self._best

    # -- state ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes a resume exact (a run's fingerprint): the settings and the seed."""
        return {**self._settings(), "seed": self.seed}

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (JSON-friendly apart from nothing)."""
        return {
            "kind": "GeneticAlgorithm",
            "generation": self.generation,
            "rng": self.rng.bit_generator.state,
            "population": [i.to_dict() for i in self.population],
            "best": None if self._best is None else self._best.to_dict(),
            "settings": self._settings(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`; refuses a state made with different settings."""
        check_state(state, "GeneticAlgorithm", self._settings())
        self.generation = int(state["generation"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.population = [Individual.from_dict(d) for d in state["population"]]
        best = state.get("best")
        self._best = None if best is None else Individual.from_dict(best)

    # -- internals -----------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "low": [float(x) for x in self.low],
            "high": [float(x) for x in self.high],
            "population_size": self.population_size,
            "tournament_size": self.tournament_size,
            "crossover": self.crossover,
            "crossover_rate": self.crossover_rate,
            "blend_alpha": self.blend_alpha,
            "mutation_rate": self.mutation_rate,
            "mutation_sigma": self.mutation_sigma,
            "mutation_decay": self.mutation_decay,
            "min_mutation_sigma": self.min_mutation_sigma,
            "elitism": self.elitism,
        }

    def _new(self, genome: NDArray[np.float64]) -> Individual:
        ident = f"g{self.generation}-{int(self.rng.integers(0, 2**62)):016x}"
        return Individual(genome=genome, id=ident, generation=self.generation)

    def _tournament(self, n: int) -> list[Individual]:
        pop = self.population
        picks = self.rng.integers(0, len(pop), size=(n, self.tournament_size))
        return [min((pop[i] for i in row), key=_fitness_key) for row in picks]

    def _offspring(self, count: int) -> NDArray[np.float64]:
        parents_a = self._tournament(count)
        parents_b = self._tournament(count)
        a = np.array([p.genome for p in parents_a])
        b = np.array([p.genome for p in parents_b])
        cross = self.rng.random(count) < self.crossover_rate
        if self.crossover == "blend":
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            span = hi - lo
            u = self.rng.random((count, self.dim))
            children = lo - self.blend_alpha * span + u * (1 + 2 * self.blend_alpha) * span
        else:
            mask = self.rng.random((count, self.dim)) < 0.5
            children = np.where(mask, a, b)
        children = np.where(cross[:, None], children, a)
        mutate = self.rng.random((count, self.dim)) < self.mutation_rate
        sigma = max(
            self.min_mutation_sigma, self.mutation_sigma * self.mutation_decay**self.generation
        )
        noise = self.rng.normal(0.0, 1.0, (count, self.dim)) * sigma
        children = children + mutate * noise * (self.high - self.low)
        return np.clip(children, self.low, self.high)


def _fitness_key(ind: Individual) -> float:
    return float("inf") if ind.fitness is None or ind.fitness != ind.fitness else ind.fitness
