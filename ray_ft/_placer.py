"""Where attempts go: placement policy over the NodeTable (pure: no Ray).

The scheduler's placement half. A node gets at most as many queued attempts per slot as it
finishes in about ``QUEUE_TARGET_S`` (one for slow work, up to ``queue_depth`` for
trivial work), and a node whose next attempt would finish after the other nodes have
cleared the whole queue takes none (so a slow node never sets the end of a batch).
Backups of stragglers take free slots only; out-of-memory retries ask for more memory.
Every question here is answered from the table's indexes, not by scanning the cluster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ray_ft._node_table import RELEARN_S, SLOW_FACTOR, NodeTable
from ray_ft._work import Attempt, CallSpec, Shape, Work
from ray_ft.config import FTConfig

__all__ = ["Placer"]

_EWMA = 0.3


class Placer:
    """Placement state: the node table, trial leases, memory learned per callable."""

    def __init__(self, config: FTConfig, clock: Callable[[], float], queue_depth: int) -> None:
        self.config = config
        self.queue_depth = queue_depth
        self._clock = clock
        self.table = NodeTable(clock, queue_depth)
        self._leases: Counter[str] = Counter()  # trial leases held, not yet used
        self._zero_since: dict[Shape, float] = {}  # since when a shape fits no usable node
        self._hungry: dict[str, int] = {}  # memory an out-of-memory callable is given now

    @property
    def nodes(self) -> dict[str, dict[str, float]]:
        """Alive nodes and their resources (read-only: change them through the table)."""
        return self.table.nodes

    @property
    def _runtime(self) -> dict[tuple[str, str], float]:
        return self.table.runtime

    @property
    def _load(self) -> Counter[tuple[str, Shape]]:
        return self.table.load

    def _usable(self, node_id: str) -> bool:
        return self.table.usable(node_id)

    def _pick(self, work: Work, queued: int) -> tuple[str, bool] | None:
        """Where this attempt goes, and whether it is a trial; None when nowhere has room."""
        for node_id, held in self._leases.items():
            usable = held > 0 and node_id in self.nodes and node_id not in work.avoid
            if usable and self.table.room(node_id, work.shape, work.kind) > 0:
                return node_id, True
        # nodes this work failed on come last; a node too slow to help is left idle (a
        # faster one will free up first and finish sooner)
        chosen = self.table.roomiest(work, lambda n: not self._too_slow(n, work, queued))
        return None if chosen is None else (chosen, False)

    def _could_run(self, work: Work) -> bool:
        """Some usable node fits this work and Ray has not refused it there."""
        return self.table.could_run(work)

    def _starved(self, shape: Shape, waiting: bool, now: float) -> str | None:
        """Why calls of this shape must fail: no usable node (nor trial lease) could run
        them for ``capacity_wait_timeout``; None while there is capacity or time left."""
        if (
            not waiting
            or self.table.fits_anywhere(shape)
            or any(shape.slots_on(self.nodes.get(n, {})) > 0 for n in self._leases)
        ):
            self._zero_since.pop(shape, None)
            return None
        since = self._zero_since.setdefault(shape, now)
        if now - since < self.config.capacity_wait_timeout:
            return None
        self._zero_since.pop(shape, None)
        return (
            f"no usable node could run tasks needing {shape.describe()} for "
            f"{self.config.capacity_wait_timeout:g}s ({len(self.nodes)} alive, "
            f"{len(self.table.unusable)} excluded or on trial); add nodes, lower the "
            "request, or raise capacity_wait_timeout"
        )

    def _stranded(self, work: Work, now: float) -> str | None:
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

    def _too_slow(self, node_id: str, work: Work, queued: int) -> bool:
        """True when the other usable nodes would clear the whole queue before this node
        finished one more attempt: giving it work would only make the batch end later."""
        key = (node_id, work.kind)
        mine = self._runtime.get(key)
        if mine is None:
            return False
        best = self.table.fastest(work.shape, work.kind)
        if mine <= SLOW_FACTOR * best:
            return False  # the fast path: not clearly slower than the fastest live node
        if self._clock() - self.table.learned_at.get(key, -float("inf")) > RELEARN_S:
            return False  # its pace is old news: one attempt finds out whether it recovered
        slots = work.shape.slots_on(self.nodes.get(node_id, {}))
        rate = self.table.rate(work.shape, work.kind)
        if self._usable(node_id) and slots > 0:
            rate -= slots / max(mine, 1e-6)  # the others' rate
        # only a clearly slower node stands back (so the fastest one always takes work)
        return rate > 1e-9 and mine > queued / rate

    def _learn_runtime(self, attempt: Attempt, now: float) -> float:
        node_id = attempt.node_id
        start = attempt.launched_at
        if attempt.queued_behind:  # it waited in Ray for a slot on its node
            start = max(start, self.table.last_done.get(node_id, start))
        if node_id in self.nodes:
            self.table.last_done[node_id] = now
        runtime = max(0.0, now - start)
        old = self._runtime.get((node_id, attempt.work.kind))
        pace = runtime if old is None else (1 - _EWMA) * old + _EWMA * runtime
        self.table.set_pace(node_id, attempt.work.kind, pace, now)
        return runtime

    def _learn_lower_bound(self, attempt: Attempt, now: float) -> None:
        """A cancelled attempt (its twin won) ran at least this long on its node: a slow
        node's pace is learned even though its attempts never finish."""
        key = (attempt.node_id, attempt.work.kind)
        elapsed = now - attempt.launched_at
        if elapsed > self._runtime.get(key, 0.0):
            self.table.set_pace(attempt.node_id, attempt.work.kind, elapsed, now)

    def _more_memory(self, work: Work, node_id: str) -> CallSpec:
        """An out-of-memory retry asks for ``oom_memory_multiplier`` x the memory it had
        (its request, or its share of the node it ran on), capped at the largest node's
        that can run it."""
        asked = float(work.spec.options.get("memory") or 0)
        had = asked
        if not had:
            node = self.nodes.get(node_id, {})
            sharing = max(1, min(work.shape.slots_on(node), int(node.get("CPU", 1) or 1)))
            had = node.get("memory", 0.0) / sharing
        wanted = int(min(had * self.config.oom_memory_multiplier, self.table.memory_cap(work)))
        if wanted <= asked:
            return work.spec
        self._hungry[work.kind] = max(self._hungry.get(work.kind, 0), wanted)
        return work.spec.with_memory(wanted)

    def _fed(self, work: Work) -> bool:
        """Give a call of a callable that ran out of memory the memory its retries got
        (evaluations of one objective need about the same); True when it changed."""
        hungry = self._hungry.get(work.kind)
        if not hungry:
            return False
        wanted = min(hungry, int(self.table.memory_cap(work)))
        if float(work.spec.options.get("memory") or 0) >= wanted:
            return False
        work.spec = work.spec.with_memory(wanted)
        return True

    def _backup_node(self, work: Work, running_on: str, threshold: float) -> str | None:
        """A node for a straggler's backup: a free slot (no queueing) on another usable
        node whose pace for this callable is not itself straggling; the fastest first.
        Scans the nodes: backups are rare (at most one per call) and never on a hot path."""
        places = []
        for node_id, resources in self.nodes.items():
            if node_id == running_on or node_id in work.avoid or node_id in work.unplaceable:
                continue
            pace = self._runtime.get((node_id, work.kind), 0.0)
            free = work.shape.slots_on(resources) - self._load[(node_id, work.shape)]
            if self._usable(node_id) and free > 0 and pace <= threshold:
                places.append((pace, node_id))
        return min(places)[1] if places else None

    def _free_slots(self, shape: Shape) -> int:
        """Slots of this shape with nothing in them on the usable nodes."""
        return self.table.free_slots(shape)
