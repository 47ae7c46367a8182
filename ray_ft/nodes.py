"""Ray's node table, read in one place: the alive nodes, by id (a GCS call: ``ray.nodes()``),
and the autoscaler's one resource request (``ray.autoscaler.sdk.request_resources``)."""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["alive_nodes", "alive_resources", "request_resources"]


def alive_nodes() -> dict[str, dict[str, Any]]:
    """Ray's entry of every alive node, by node id (hex)."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def alive_resources() -> dict[str, dict[str, float]]:
    """Every alive node's total resources, by node id."""
    return {node_id: dict(n["Resources"]) for node_id, n in alive_nodes().items()}


def request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler for room for these bundles at once (cluster-wide: the last call
    wins and stands until replaced; an empty list clears it)."""
    from ray.autoscaler.sdk import request_resources as ask

    ask(bundles=bundles)
