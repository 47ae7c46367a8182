"""NodeBreakers: one circuit breaker per node, their transitions and trial leases (pure).

The manager decides when a node's breaker opens; this room keeps the breakers (made
CLOSED on first use), the bounded log of their transitions, and the HALF_OPEN trial calls
leased to executors, taken back after a timeout so a driver that died holding one cannot
keep a node out of use. Every change calls ``on_change`` (the manager bumps its version).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ray_ft.manager.breaker import BreakerState, CircuitBreaker
from ray_ft.manager.records import HISTORY_LIMIT

__all__ = ["NodeBreakers"]


class NodeBreakers:
    """The breakers by node; ``transitions`` keeps the last ``HISTORY_LIMIT`` moves."""

    __slots__ = (
        "_clock",
        "_leases",
        "_on_change",
        "_timeout",
        "_trials",
        "_wall_clock",
        "by_node",
        "transitions",
    )

    def __init__(
        self,
        timeout: float,
        trials: int,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        on_change: Callable[[], None],
    ) -> None:
        self.by_node: dict[str, CircuitBreaker] = {}  #: one per node, on first use
        self.transitions: list[dict[str, Any]] = []  #: {worker_id, from, to, at}, oldest first
        self._leases: dict[str, list[float]] = {}  # node -> when each trial was leased
        self._timeout, self._trials = timeout, trials
        self._clock, self._wall_clock = clock, wall_clock  # breakers; transitions' times
        self._on_change = on_change

    def get(self, node: str) -> CircuitBreaker:
        """The node's breaker, created CLOSED on first use."""
        breaker = self.by_node.get(node)
        if breaker is None:
            breaker = CircuitBreaker(
                self._timeout, half_open_max_calls=self._trials, clock=self._clock, name=node
            )
            breaker.add_listener(self._moved)
            self.by_node[node] = breaker
        return breaker

    def reconfigure(self, timeout: float, trials: int) -> None:
        """New settings for every breaker, their states kept."""
        self._timeout, self._trials = timeout, trials
        for breaker in self.by_node.values():
            breaker.reconfigure(timeout, trials)

    def lease(self, node: str) -> bool:
        """Take one trial call of a HALF_OPEN breaker; False when none is left."""
        breaker = self.get(node)
        granted = breaker.state is BreakerState.HALF_OPEN and breaker.allow_request()
        if granted:
            self._leases.setdefault(node, []).append(self._clock())
            self._on_change()
        return granted

    def end_lease(self, node: str) -> None:
        """A trial ended (its outcome goes to the breaker separately)."""
        leases = self._leases.get(node)
        if leases:
            leases.pop(0)
        self._on_change()

    def expire(self, limit: float) -> list[str]:
        """Take back the trials leased ``limit`` seconds ago or more; the nodes, one per
        lease taken back."""
        now = self._clock()
        expired = []
        for node, leases in self._leases.items():
            while leases and now - leases[0] >= limit:
                leases.pop(0)
                self.get(node).release_trial()
                expired.append(node)
                self._on_change()
        return expired

    def forget(self, node: str) -> None:
        """The node left for good: its breaker and leases go (its transitions stay)."""
        self.by_node.pop(node, None)
        self._leases.pop(node, None)

    def open_nodes(self) -> list[str]:
        """Nodes whose breaker is OPEN (one due to turn HALF_OPEN turns now)."""
        return [node for node, breaker in self.by_node.items() if breaker.is_open()]

    def half_open(self, taking: Callable[[str], bool]) -> dict[str, int]:
        """HALF_OPEN nodes that ``taking`` accepts, and the trial calls each still admits."""
        return {
            node: breaker.trials_available()
            for node, breaker in self.by_node.items()
            if breaker.state is BreakerState.HALF_OPEN and taking(node)
        }

    def next_reopening(self) -> float:
        """When the first OPEN breaker turns HALF_OPEN (inf: none is OPEN)."""
        return min((b.reopens_at() for b in self.by_node.values()), default=math.inf)

    def by_node_transitions(self, last: int) -> dict[str, list[dict[str, Any]]]:
        """Each node's last ``last`` transitions, oldest first: one pass over the bounded
        log, not one per node."""
        out: dict[str, list[dict[str, Any]]] = {}
        for transition in self.transitions:
            out.setdefault(str(transition["worker_id"]), []).append(transition)
        return {node: moves[-last:] for node, moves in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """The state file's section (leases are not kept: a restart voids them)."""
        return {
            "breakers": {node: b.get_state() for node, b in self.by_node.items()},
            "breaker_transitions": list(self.transitions),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Replace every breaker and the log with a :meth:`to_dict` section."""
        self.by_node.clear()
        self._leases.clear()
        for node, breaker_state in state.get("breakers", {}).items():
            self.get(node).load_state(breaker_state)
        self.transitions = list(state.get("breaker_transitions", []))

    def _moved(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        self._on_change()
        self.transitions.append(
            {
                "worker_id": breaker.name,
                "from": old.value,
                "to": new.value,
                "at": self._wall_clock(),
            }
        )
        del self.transitions[:-HISTORY_LIMIT]
