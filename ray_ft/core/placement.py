"""Where attempts go: the placement policy over the NodeTable (pure: no Ray).

A node gets at most as many queued attempts per slot as it finishes in about
``QUEUE_TARGET_S`` (one for slow work, up to ``queue_depth`` for trivial work), and a node
whose next attempt would finish after the other nodes have cleared the whole queue takes
none (so a slow node never sets the end of a batch). Trial leases of HALF_OPEN nodes come
first. Backups of stragglers take free slots only. Every question here is answered from
the table's indexes, not by scanning the cluster (a backup, at most one per call, scans).
"""

from __future__ import annotations

from collections.abc import Callable, Container

from ray_ft.config import FTConfig
from ray_ft.core.autoscaling import NodeTypes
from ray_ft.core.nodes import SLOW_FACTOR, NodeTable
from ray_ft.core.pace import RELEARN_S
from ray_ft.core.work import Shape, Work

__all__ = ["WORKER_START_S", "Placement"]

#: what a node's first attempt may have spent waiting for Ray to start a worker process
#: there (about 1 s on a loaded 2-core machine): a node is not judged slow for it
WORKER_START_S = 2.0


class Placement:
    """Placement decisions; its only state is since when each shape found no node."""

    def __init__(self, config: FTConfig, table: NodeTable, clock: Callable[[], float]) -> None:
        self.config = config
        self.table = table
        self._clock = clock
        self._zero_since: dict[Shape, float] = {}  # since when a shape fits no usable node
        # what the cluster's autoscaler can launch (None: no autoscaler, or not known)
        self.node_types: NodeTypes | None = None
        self.draining: Container[str] = ()  # nodes with a drain notice: no trials there

    def pick(self, work: Work, queued: int) -> tuple[str, bool] | None:
        """Where this attempt goes, and whether it is a trial; None when nowhere has room."""
        table = self.table
        for node_id, held in table.leases.items():
            usable = (
                held > 0
                and node_id in table.nodes
                and node_id not in work.avoid
                and node_id not in self.draining
            )
            if usable and table.room(node_id, work.shape, work.kind) > 0:
                return node_id, True
        # nodes this work failed on come last; a node too slow to help is left idle (a
        # faster one will free up first and finish sooner)
        chosen = table.roomiest(work, lambda n: not self.too_slow(n, work, queued))
        return None if chosen is None else (chosen, False)

    def starved(self, shape: Shape, waiting: bool, now: float) -> str | None:
        """Why calls of this shape must fail: no usable node (nor trial lease) could run
        them for ``capacity_wait_timeout``; None while there is capacity or time left."""
        table = self.table
        if (
            not waiting
            or table.fits_anywhere(shape)
            or any(shape.slots_on(table.nodes.get(n, {})) > 0 for n in table.leases)
        ):
            self._zero_since.pop(shape, None)
            return None
        types = self.node_types
        request = dict(shape.key)
        # an excluded or draining node that could run it may come back; one that could
        # not is no reason to wait
        held_back = any(
            n in table.nodes and shape.slots_on(table.nodes[n]) > 0 for n in table.unusable
        )
        if types is not None and not held_back and not types.launchable(request):
            self._zero_since.pop(shape, None)
            return (
                f"no node can run tasks needing {shape.describe()}: no alive node has it "
                f"({len(table.nodes)} alive) and no node type the autoscaler can launch "
                f"fits it (node types: {types.describe()}); lower the request or add a node "
                "type that has it to the cluster config"
            )
        since = self._zero_since.setdefault(shape, now)
        if now - since < self.config.capacity_wait_timeout:
            return None
        self._zero_since.pop(shape, None)
        if types is not None:
            return (
                f"the autoscaler brought up no usable node for tasks needing "
                f"{shape.describe()} in {self.config.capacity_wait_timeout:g}s (node types: "
                f"{types.describe()}; {len(table.nodes)} alive, {len(table.unusable)} "
                "excluded, draining or on trial); check the autoscaler's log (quota, "
                "max_workers), lower the request, or raise capacity_wait_timeout"
            )
        return (
            f"no usable node could run tasks needing {shape.describe()} for "
            f"{self.config.capacity_wait_timeout:g}s ({len(table.nodes)} alive, "
            f"{len(table.unusable)} excluded or on trial); add nodes, lower the "
            "request, or raise capacity_wait_timeout"
        )

    def stranded(self, work: Work, now: float) -> str | None:
        """Why a call that only nodes Ray refused could take must fail (after
        ``capacity_wait_timeout``); None while it may still wait."""
        if work.stranded_since is None:
            work.stranded_since = now
        if now - work.stranded_since < self.config.capacity_wait_timeout:
            return None
        return (
            f"no usable node could run {work.name} (needs {work.shape.describe()}) for "
            f"{self.config.capacity_wait_timeout:g}s: Ray refused it on "
            f"{len(work.unplaceable)} node(s) and no other fits; add nodes that can meet "
            "it, lower the request, or raise capacity_wait_timeout"
        )

    def too_slow(self, node_id: str, work: Work, queued: int) -> bool:
        """True when the other usable nodes would clear the whole queue before this node
        finished one more attempt: giving it work would only make the batch end later."""
        table = self.table
        key = (node_id, work.kind)
        paces = table.paces
        mine = paces.get(node_id, work.kind)
        if mine is None:
            return False
        if key in paces.provisional:  # one attempt, which may have waited for a worker
            mine = max(0.0, mine - WORKER_START_S)  # process to start: allow for it
        best = table.fastest(work.shape, work.kind)
        if mine <= SLOW_FACTOR * best:
            return False  # the fast path: not clearly slower than the fastest live node
        if self._clock() - paces.learned_at.get(key, -float("inf")) > RELEARN_S:
            return False  # its pace is old news: one attempt finds out whether it recovered
        slots = work.shape.slots_on(table.nodes.get(node_id, {}))
        rate = table.rate(work.shape, work.kind)
        if table.usable(node_id) and slots > 0:
            rate -= slots / max(mine, 1e-6)  # the others' rate
        # only a clearly slower node stands back (so the fastest one always takes work)
        return rate > 1e-9 and mine > queued / rate

    def backup_node(self, work: Work, running_on: str, threshold: float) -> str | None:
        """A node for a straggler's backup: a free slot (no queueing) on another usable
        node whose pace for this callable is not itself straggling; the fastest first.
        Scans the nodes: backups are rare (at most one per call) and never on a hot path."""
        table = self.table
        places = []
        for node_id, resources in table.nodes.items():
            if node_id == running_on or node_id in work.avoid or node_id in work.unplaceable:
                continue
            if node_id in table.degraded:
                continue  # a backup is optional: never on a node under pressure
            pace = table.paces.get(node_id, work.kind) or 0.0
            free = work.shape.slots_on(resources) - table.load[(node_id, work.shape)]
            if table.usable(node_id) and free > 0 and pace <= threshold:
                places.append((pace, node_id))
        return min(places)[1] if places else None
