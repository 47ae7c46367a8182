"""The node table's index records: per (shape, callable) and per shape (pure data).

``ray_ft.core.nodes.NodeTable`` keeps them up to date on each event; they hold heaps whose
entries may be stale and are corrected when they reach the top.
"""

from __future__ import annotations

__all__ = ["Room", "ShapeIndex", "WorkIndex"]

Room = tuple[int, float, int, str]  # (tier, -room, home rank, node): a room heap entry


class WorkIndex:
    """Placement indexes of one (shape, callable)."""

    __slots__ = ("fast", "parked", "parked_at", "rate", "room")

    def __init__(self) -> None:
        # (tier, -room, home rank, node): the roomiest ok node on top, the driver's own
        # node first among equals (its worker is warm), degraded nodes (tier 1) after
        # every ok node with room
        self.room: list[Room] = []
        self.fast: list[tuple[float, str]] = []  # (runtime, node): the fastest node on top
        self.rate = 0.0  # sum of slots / runtime over usable nodes with a known pace
        # nodes found too slow: out of the room heap for a while (nodes.py's _PARK_S), so
        # that a slow node with much room is not looked at again by every placement
        self.parked: list[Room] = []
        self.parked_at = 0.0


class ShapeIndex:
    """Capacity indexes of one shape."""

    __slots__ = ("fits", "free", "memory", "slots")

    def __init__(self) -> None:
        self.fits = 0  # usable live nodes with at least one slot of this shape
        self.slots = 0  # slots of this shape on usable live nodes
        self.free = 0  # free slots of this shape on usable live nodes
        self.memory: list[tuple[float, str]] = []  # (-memory, node) of nodes that fit
