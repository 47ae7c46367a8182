"""The elastic cluster as plain data (pure: no Ray): node types, drivers' demand, idleness.

The manager actor holds one of each for the cluster. ``DemandBook`` adds up what every
driver reported it would run at once (a driver that stops reporting stops counting after
``DEMAND_TTL_S``) into the bundles of one ``request_resources`` call; ``NodeTypes`` says
whether a request fits a node type the autoscaler can launch; ``IdleNodes`` says which
worker nodes have had every resource free long enough that a health probe should leave
them (a node with an actor on it is never idle to Ray's autoscaler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray_ft.core.autoscaling import AUTO_SIZED, NodeType, NodeTypes

__all__ = [
    "DEMAND_TTL_S",
    "MAX_BUNDLES",
    "PROBE_LINGER_S",
    "DemandBook",
    "IdleNodes",
    "node_types_from_config",
]

DEMAND_TTL_S = 60.0  # a driver silent this long no longer counts
MAX_BUNDLES = 10_000  # a request_resources call never lists more bundles than this
PROBE_LINGER_S = 3.0  # a worker node idle this long loses its probe (scale-down lag)

Request = tuple[tuple[str, float], ...]  # a resource request as sorted (name, amount) pairs


def node_types_from_config(config: Mapping[str, Any]) -> NodeTypes | None:
    """The worker types of an autoscaler config (``available_node_types`` of a cluster
    YAML); None when a type does not list its resources (the autoscaler sizes it from the
    instance at run time: then nothing can be said about what fits)."""
    available = config.get("available_node_types")
    if not isinstance(available, Mapping):
        return None
    head = config.get("head_node_type")
    types = []
    for name, spec in sorted(available.items()):
        if name == head or not isinstance(spec, Mapping):
            continue
        resources = spec.get("resources")
        if not isinstance(resources, Mapping) or not resources:
            return None
        most = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        pairs = tuple(sorted((str(k), float(v)) for k, v in resources.items() if float(v) > 0))
        types.append(NodeType(str(name), pairs, most))
    return NodeTypes(tuple(types))


class DemandBook:
    """Every driver's last reported demand; their sum is the cluster's resource request.

    A report replaces the driver's previous one (O(shapes)); ``bundles`` is rebuilt only
    when a report changed something or a driver expired.
    """

    def __init__(self, ttl: float = DEMAND_TTL_S, max_bundles: int = MAX_BUNDLES) -> None:
        self.ttl = ttl
        self.max_bundles = max_bundles
        self._by_driver: dict[str, tuple[float, dict[Request, int]]] = {}
        self.version = 0  # bumped whenever the sum may have changed

    def report(self, driver: str, demand: Mapping[Request, int], now: float) -> None:
        """``driver`` would run this many attempts of each request at once (empty: none)."""
        clean = {tuple(r): int(n) for r, n in demand.items() if int(n) > 0}
        old = self._by_driver.get(driver)
        if not clean:
            if old is not None:
                del self._by_driver[driver]
                self.version += 1
            return
        if old is None or old[1] != clean:
            self.version += 1
        self._by_driver[driver] = (now, clean)

    def expire(self, now: float) -> list[str]:
        """Drop drivers that have not reported for ``ttl`` (a dead driver stops counting)."""
        gone = [d for d, (at, _) in self._by_driver.items() if now - at >= self.ttl]
        for driver in gone:
            del self._by_driver[driver]
        if gone:
            self.version += 1
        return gone

    def total(self) -> dict[Request, int]:
        """The sum over drivers, per request."""
        out: dict[Request, int] = {}
        for _, demand in self._by_driver.values():
            for request, count in demand.items():
                out[request] = out.get(request, 0) + count
        return out

    def bundles(self) -> list[dict[str, float]]:
        """The ``request_resources(bundles=...)`` argument: one bundle per attempt wanted at
        once, capped at ``max_bundles`` (shared out in proportion over the requests)."""
        total = self.total()
        count = sum(total.values())
        scale = min(1.0, self.max_bundles / count) if count else 1.0
        out: list[dict[str, float]] = []
        for request in sorted(total):
            n = max(1, int(total[request] * scale))
            out.extend(dict(request) for _ in range(n))
        return out[: self.max_bundles]

    def drivers(self) -> int:
        return len(self._by_driver)


class IdleNodes:
    """Since when each worker node has had every resource free (Ray's view of idleness).

    ``observe`` takes one reading of every node's total and available resources; a node
    busy in that reading is ``busy``; one free for ``linger`` seconds is idle. A node that
    left is forgotten at the next reading.
    """

    def __init__(self, linger: float = PROBE_LINGER_S) -> None:
        self.linger = linger
        self._free_since: dict[str, float] = {}

    def observe(
        self,
        total: Mapping[str, Mapping[str, float]],
        available: Mapping[str, Mapping[str, float]],
        now: float,
    ) -> None:
        for node_id in [n for n in self._free_since if n not in total]:
            del self._free_since[node_id]
        for node_id, resources in total.items():
            free = available.get(node_id, {})
            if _all_free(resources, free):
                self._free_since.setdefault(node_id, now)
            else:
                self._free_since.pop(node_id, None)

    def idle(self, node_id: str, now: float) -> bool:
        """The node has had every resource free for ``linger`` seconds."""
        since = self._free_since.get(node_id)
        return since is not None and now - since >= self.linger


def _all_free(total: Mapping[str, float], available: Mapping[str, float]) -> bool:
    """No task or actor holds any of the node's resources (object store and the node's
    own ``node:`` markers aside)."""
    for name, amount in total.items():
        if name.startswith("node:") or name in AUTO_SIZED:
            continue
        if available.get(name, 0.0) + 1e-6 < amount:
            return False
    return True
