"""Ray's node table, read in one place: the alive nodes, by id (a GCS call: ``ray.nodes()``)."""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["alive_nodes", "alive_resources"]


def alive_nodes() -> dict[str, dict[str, Any]]:
    """Ray's entry of every alive node, by node id (hex)."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def alive_resources() -> dict[str, dict[str, float]]:
    """Every alive node's total resources, by node id."""
    return {node_id: dict(n["Resources"]) for node_id, n in alive_nodes().items()}
