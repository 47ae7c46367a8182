"""CMAES: CMA-ES from the ``cma`` package behind the BaseOptimizer protocol.

``cma`` draws from NumPy's global random state. Every call into it runs with this
optimizer's own saved global state swapped in (and the caller's swapped back), so its
stream is isolated from other code and checkpointed with it: a resumed run is exact.
Needs the optional extra: ``pip install 'ray-ft[cma]'``.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

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
        self.dim = dim
        self.seed = seed
        self._np_state: Any = np.random.RandomState(seed).get_state()
        opts: dict[str, Any] = {"seed": seed, "verbose": -9, "verb_log": 0, "verb_disp": 0}
        if population_size is not None:
            opts["popsize"] = population_size
        if bounds is not None:
            opts["bounds"] = [list(np.broadcast_to(b, (dim,)).astype(float)) for b in bounds]
        x0_vec = np.broadcast_to(np.asarray(x0, dtype=np.float64), (dim,)).copy()
        with self._own_random():
            self.es = cma.CMAEvolutionStrategy(x0_vec, sigma0, opts)
        self.population: list[Individual] = []
        self.generation = 0
        self._best: Individual | None = None
        self._asked: list[Any] = []

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
        self.population = list(individuals)
        for ind in individuals:
            if ind.fitness is not None and (self._best is None or ind.fitness < self._best.fitness):
                self._best = ind
        self.generation += 1
        self._asked = []

    @property
    def best(self) -> Individual | None:
        """The lowest-fitness individual told so far."""
        return self._best

    def get_state(self) -> dict[str, Any]:
        """The pickled strategy and its private random state."""
        return {
            "kind": "CMAES",
            "es": pickle.dumps(self.es),
            "np_state": self._np_state,
            "generation": self.generation,
            "best": None if self._best is None else self._best.to_dict(),
            "dim": self.dim,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` (the checkpoint must come from a trusted source)."""
        if state.get("kind") != "CMAES" or state.get("dim") != self.dim:
            msg = "state was not saved by a CMAES of this dimension"
            raise ValueError(msg)
        self.es = pickle.loads(state["es"])
        self._np_state = state["np_state"]
        self.generation = int(state["generation"])
        best = state.get("best")
        self._best = None if best is None else Individual.from_dict(best)
        self._asked = []

    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outer)
