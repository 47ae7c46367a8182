"""Trial leases of HALF_OPEN nodes, as one executor sees them (pure: no Ray).

A HALF_OPEN node takes trial calls only, each under a lease the manager grants (its
breaker admits ``half_open_max_calls`` at a time across every executor). Here: which
nodes a lease was asked for, the leases held (kept in the NodeTable, which prunes them
with their node) and the trial attempts running, so no node is asked twice at once and
none gets more trials than it admits. Every table drops a node that leaves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ray_ft.core.nodes import NodeTable

__all__ = ["TrialLeases"]


class TrialLeases:
    """Leases asked for, held and in use, per node."""

    def __init__(self, table: NodeTable, max_calls: int) -> None:
        self.table = table
        self.max_calls = max_calls
        self.asked: set[str] = set()  # requested, no answer yet
        self.running: Counter[str] = Counter()  # trial attempts in flight

    def to_ask(self, half_open: Iterable[tuple[str, int]]) -> list[str]:
        """HALF_OPEN nodes worth a lease request now (alive, admitting trials, not asked
        already, fewer leases and trials than the breaker admits); marks them asked."""
        wanted = []
        for node_id, available in half_open:
            busy = self.table.leases[node_id] + self.running[node_id]
            if (
                available > 0
                and node_id in self.table.nodes
                and node_id not in self.asked
                and busy < self.max_calls
            ):
                self.asked.add(node_id)
                wanted.append(node_id)
        return wanted

    def answered(self, node_id: str, granted: bool) -> None:
        """The manager answered; a granted lease is held until a trial uses it."""
        self.asked.discard(node_id)
        if granted:
            self.table.leases[node_id] += 1

    def use(self, node_id: str) -> None:
        """A trial attempt launched under one of the node's leases."""
        self.table.leases[node_id] -= 1
        if self.table.leases[node_id] <= 0:
            del self.table.leases[node_id]
        self.running[node_id] += 1

    def ended(self, node_id: str) -> None:
        """A trial attempt ended (whatever its outcome)."""
        self.running[node_id] -= 1
        if self.running[node_id] <= 0:
            del self.running[node_id]

    def void_except(self, half_open: Iterable[str]) -> None:
        """Leases of nodes no longer HALF_OPEN are void (the breaker moved on)."""
        keep = set(half_open)
        for node_id in [n for n in self.table.leases if n not in keep]:
            del self.table.leases[node_id]

    def release_all(self) -> list[str]:
        """Every lease held and unused, one node id per lease; none is held afterwards."""
        released = [node_id for node_id, n in self.table.leases.items() for _ in range(n)]
        self.table.leases.clear()
        return released

    def forget(self, node_id: str) -> None:
        """The node left."""
        self.asked.discard(node_id)
        self.running.pop(node_id, None)
