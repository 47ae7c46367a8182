"""Individual: one candidate solution and its fitness, serializable to a plain dict."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Individual"]


@dataclasses.dataclass(slots=True, eq=False)
class Individual:
    """A genome (float64 vector) with its fitness; fitness None means not evaluated yet."""

    genome: NDArray[np.float64]
    fitness: float | None = None
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    generation: int = 0
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.genome = np.asarray(self.genome, dtype=np.float64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Individual):
            return NotImplemented
        return (
            self.id == other.id
            and self.generation == other.generation
            and _same_fitness(self.fitness, other.fitness)
            and np.array_equal(self.genome, other.genome)
            and self.metadata == other.metadata
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict; floats survive a JSON round trip bit for bit."""
        return {
            "genome": [float(x) for x in self.genome],
            "fitness": None if self.fitness is None else float(self.fitness),
            "id": self.id,
            "generation": self.generation,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Individual:
        """Inverse of :meth:`to_dict`."""
        if "genome" not in data:
            msg = "an Individual dict needs a 'genome' key (as written by Individual.to_dict)"
            raise ValueError(msg)
        return cls(
            genome=np.asarray(data["genome"], dtype=np.float64),
            fitness=data.get("fitness"),
            id=data.get("id") or uuid.uuid4().hex,
            generation=int(data.get("generation", 0)),
            metadata=dict(data.get("metadata") or {}),
        )


def _same_fitness(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (a != a and b != b)  # NaN equals NaN here
