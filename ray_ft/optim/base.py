"""BaseOptimizer: the ask/tell protocol every optimizer driven by optimize() follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ray_ft.optim.individual import Individual

__all__ = ["BaseOptimizer", "check_state"]


@runtime_checkable
class BaseOptimizer(Protocol):
    """Ask for candidates, tell their fitness; state is a picklable dict for checkpoints.

    ``get_state()`` must capture everything a later ``ask()`` depends on, RNG streams
    included, so that ``load_state(get_state())`` resumes bit for bit.
    """

    population: list[Individual]

    def ask(self) -> list[Individual]:
        """The next candidates to evaluate."""
        ...

    def tell(self, individuals: Sequence[Individual]) -> None:
        """Report the evaluated candidates, in ask order."""
        ...

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what get_state returned."""
        ...

    @property
    def best(self) -> Individual | None:
        """The best individual told so far (lowest fitness)."""
        ...


def check_state(state: dict[str, Any], kind: str, settings: dict[str, Any]) -> None:
    """Refuse a state made by another optimizer, or by this one with other settings (a
    resume that would not continue the same run)."""
    if state.get("kind") != kind:
        msg = f"state of kind {state.get('kind')!r} cannot load into a {kind}"
        raise ValueError(msg)
    if state["settings"] != settings:
        msg = (
            f"checkpoint was made with other {kind} settings; build the optimizer "
            f"with {state['settings']}"
        )
        raise ValueError(msg)
