"""CMAES: CMA-ES from the ``cma`` package behind the BaseOptimizer protocol.

``cma`` draws from NumPy's global random state. Every call into it runs with this
optimizer's own saved global state swapped in (and the caller's swapped back), so its
stream is isolated from other code. CMA-ES is a pure function of its seed and the told
fitnesses, so the checkpointed state is just those fitnesses (JSON, no pickled cma
object): loading replays every ask/tell from the seed and lands on the identical strategy.
Needs the optional extra: ``pip install 'ray-ft[cma]'``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ray_ft.optim.base import check_state
from ray_ft.optim.individual import Individual

__all__ = ["CMAES"]


class CMAES:
    """Minimize with CMA-ES; ``bounds`` (low, high) are handled by cma's boundary handler."""

    def __init__(
        self,
        dim: int,
        x0: ArrayLike | float = 0.0,
        sigma0: float = 0.5,
        population_size: int | None = None,
        *,
        seed: int = 1,
        bounds: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import cma
        except ImportError as exc:
            msg = "CMAES needs the cma package; install it with pip install 'ray-ft[cma]'"
            raise ImportError(msg) from exc
        self._cma = cma
        self.dim = dim
        self.seed = seed
        self.sigma0 = float(sigma0)
        self.x0 = [float(v) for v in np.broadcast_to(np.asarray(x0, dtype=np.float64), (dim,))]
        self.opts: dict[str, Any] = {"seed": seed, "verbose": -9, "verb_log": 0, "verb_disp": 0}
        if population_size is not None:
            self.opts["popsize"] = population_size
        if bounds is not None:
            self.opts["bounds"] = [
                [float(v) for v in np.broadcast_to(np.asarray(b, dtype=np.float64), (dim,))]
                for b in bounds
            ]
        self.population: list[Individual] = []
        self._reset()

    def _reset(self) -> None:
        """A fresh strategy from the seed (the start of every run and of every replay)."""
        self._np_state: Any = np.random.RandomState(self.seed).get_state()
        with self._own_random():
            self.es = self._cma.CMAEvolutionStrategy(np.array(self.x0), self.sigma0, self.opts)
        self.generation = 0
        self._best: Individual | None = None
        self._asked: list[Any] = []
        self._told: list[list[float]] = []

    def ask(self) -> list[Individual]:
        """One generation of candidates sampled by CMA-ES."""
        with self._own_random():
            solutions = self.es.ask()
        self._asked = solutions
        return [
            Individual(
                genome=np.asarray(x, dtype=np.float64),
                id=f"g{self.generation}-{i}",
                generation=self.generation,
            )
            for i, x in enumerate(solutions)
        ]

    def tell(self, individuals: Sequence[Individual]) -> None:
        """Update the distribution with the evaluated candidates (in ask order)."""
        if len(individuals) != len(self._asked):
            msg = f"tell() got {len(individuals)} individuals for {len(self._asked)} asked"
            raise ValueError(msg)
        fitness = [float("inf") if i.fitness is None else float(i.fitness) for i in individuals]
        with self._own_random():
            self.es.tell(self._asked, fitness)
        self._told.append(fitness)
        self.population = list(individuals)
        for ind in individuals:
            best = self._best
            if ind.fitness is not None and (
                best is None or best.fitness is None or ind.fitness < best.fitness
            ):
                self._best = ind
        self.generation += 1
        self._asked = []

    @property
    def best(self) -> Individual | None:
        """The lowest-fitness individual told so far."""
        return self._best

    def identity(self) -> dict[str, Any]:
        """What makes a resume exact (a run's fingerprint): the settings, seed included."""
        return self._settings()

    def get_state(self) -> dict[str, Any]:
        """Settings and every told fitness (JSON-serializable)."""
        return {
            "kind": "CMAES",
            "settings": self._settings(),
            "told": [list(f) for f in self._told],
            "best": None if self._best is None else self._best.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Rebuild from the seed and replay every told generation."""
        check_state(state, "CMAES", self._settings())
        self._reset()
        for fitness in state["told"]:
            with self._own_random():
                solutions = self.es.ask()
                self.es.tell(solutions, [float(v) for v in fitness])
            self._told.append([float(v) for v in fitness])
        self.generation = len(self._told)
        best = state.get("best")
        self._best = None if best is None else Individual.from_dict(best)

    def _settings(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "seed": self.seed,
            "sigma0": self.sigma0,
            "x0": self.x0,
            "opts": {k: v for k, v in self.opts.items()},
        }

    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outer)
