"""The elastic cluster as the scheduler sees it (pure: no Ray): node types and drains.

``NodeTypes`` are the worker types an autoscaler can launch: a request that fits none of
them can never run and fails at once. ``Draining`` holds the nodes that got a drain notice
(a spot preemption, a scale-down) and their deadlines: no new work goes there, and an
attempt expected to outlive its node's deadline gets a copy elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["AUTO_SIZED", "DRAIN_GRACE_S", "Draining", "NodeType", "NodeTypes"]

# resources Ray sizes by itself: a node type that does not list them says nothing about them
AUTO_SIZED = ("memory", "object_store_memory")
DRAIN_GRACE_S = 10.0  # a drained node the manager stops listing while Ray still does


@dataclasses.dataclass(frozen=True, slots=True)
class NodeType:
    """A kind of worker the autoscaler launches: its resources and how many at most."""

    name: str
    resources: tuple[tuple[str, float], ...]
    max_workers: int

    def fits(self, request: Mapping[str, float]) -> bool:
        """One node of this type could run ``request`` (unlisted memory is unknown: fits)."""
        have = dict(self.resources)
        for name, amount in request.items():
            if amount <= 0 or (name in AUTO_SIZED and name not in have):
                continue
            if have.get(name, 0.0) + 1e-9 < amount:
                return False
        return True

    def describe(self) -> str:
        body = ", ".join(f"{k}={v:g}" for k, v in self.resources) or "no resources"
        return f"{self.name} ({body}; max {self.max_workers})"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeTypes:
    """The worker types an autoscaler can launch (the head's type is not one)."""

    types: tuple[NodeType, ...]

    def launchable(self, request: Mapping[str, float]) -> bool:
        """Some type with room for at least one node could run ``request``."""
        return any(t.max_workers > 0 and t.fits(request) for t in self.types)

    def describe(self) -> str:
        return "; ".join(t.describe() for t in self.types) or "none"

    def to_json(self) -> list[list[Any]]:
        return [[t.name, [list(r) for r in t.resources], t.max_workers] for t in self.types]

    @classmethod
    def from_json(cls, data: Iterable[Any]) -> NodeTypes:
        return cls(
            tuple(
                NodeType(str(name), tuple((str(k), float(v)) for k, v in res), int(most))
                for name, res, most in data
            )
        )


class Draining:
    """Draining nodes and their deadlines (the scheduler's clock; ``inf``: no deadline).

    A node stays here until it leaves the node table, or until the manager has stopped
    listing it for ``DRAIN_GRACE_S`` while it is still alive (a drain that was undone): a
    node that died at its deadline may vanish from the drain list before it vanishes
    from Ray's node table, and its attempts are still the preemption's.
    """

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}
        self._unlisted_since: dict[str, float] = {}

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.deadlines

    def __bool__(self) -> bool:
        return bool(self.deadlines)

    def update(self, listed: Mapping[str, float], now: float) -> list[str]:
        """The manager's current list; returns the nodes newly draining (O(listed))."""
        new = [n for n in listed if n not in self.deadlines]
        for node_id, deadline in listed.items():
            self.deadlines[node_id] = deadline if deadline > 0 else math.inf
            self._unlisted_since.pop(node_id, None)
        for node_id in [n for n in self.deadlines if n not in listed]:
            since = self._unlisted_since.setdefault(node_id, now)
            if now - since >= DRAIN_GRACE_S:
                self.forget(node_id)
        return new

    def forget(self, node_id: str) -> None:
        """The node left (or its drain was undone)."""
        self.deadlines.pop(node_id, None)
        self._unlisted_since.pop(node_id, None)

    def outlives(self, node_id: str, launched_at: float, pace: float | None, now: float) -> bool:
        """An attempt launched at ``launched_at`` would still run at the node's deadline:
        by its learned pace, or, with no pace known or one it has already outrun, assumed."""
        deadline = self.deadlines.get(node_id, math.inf)
        if math.isinf(deadline):
            return False
        return pace is None or now - launched_at >= pace or launched_at + pace > deadline
