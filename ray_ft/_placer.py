"""Where attempts go: node resources, load and the pace each node shows (pure: no Ray).

The scheduler's placement half. A node gets at most as many queued attempts per slot as it
finishes in about ``_QUEUE_TARGET_S`` (one for slow work, up to ``queue_depth`` for
trivial work), and a node whose next attempt would finish after the other nodes have
cleared the whole queue takes none (so a slow node never sets the end of a batch).
Backups of stragglers take free slots only; out-of-memory retries ask for more memory.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from ray_ft._work import Attempt, CallSpec, Shape, Work
from ray_ft.config import FTConfig
from ray_ft.placement import water_fill

__all__ = ["Placer"]

_QUEUE_TARGET_S = 0.25  # queued work per slot beyond the running attempt, in seconds
_EWMA = 0.3
_SLOW_FACTOR = 2.0  # a node this many times slower than the fastest may stand back
_RELEARN_S = 10.0  # a node that stood back this long gets an attempt again (it may be well)


class Placer:
    """Placement state: alive nodes, unusable ones, load per (node, shape), learned pace."""

    def __init__(self, config: FTConfig, clock: Callable[[], float], queue_depth: int) -> None:
        self.config = config
        self.queue_depth = queue_depth
        self._clock = clock
        self.nodes: dict[str, dict[str, float]] = {}
        self._unusable: frozenset[str] | set[str] = frozenset()  # excluded or HALF_OPEN
        self._leases: Counter[str] = Counter()  # trial leases held, not yet used
        self._load: Counter[tuple[str, Shape]] = Counter()
        self._runtime: dict[tuple[str, str], float] = {}
        self._learned_at: dict[tuple[str, str], float] = {}  # when a pace was last seen
        self._fastest: dict[str, float] = {}  # lowest known runtime per callable, any node
        # launch times of the attempts in flight per (node, callable): bounded by capacity
        self._running: dict[tuple[str, str], dict[int, float]] = {}
        self._last_done: dict[str, float] = {}
        self._zero_since: dict[Shape, float] = {}  # since when a shape fits no usable node
        self._hungry: dict[str, int] = {}  # memory an out-of-memory callable is given now

    def _depth(self, node_id: str, work: Work) -> int:
        """Attempts per slot handed to Ray at once on this node, from its pace."""
        if work.timeout is not None:
            return 1  # a timed attempt's clock must start when it runs
        key = (node_id, work.kind)
        runtime = self._runtime.get(key)
        if runtime is None:
            return 1  # learn the pace first
        running = self._running.get(key)
        if running:  # an attempt running longer than the estimate: the pace went stale
            oldest = next(iter(running.values()))  # launched in clock order: the first
            runtime = max(runtime, self._clock() - oldest)
        return max(1, min(self.queue_depth, math.ceil(_QUEUE_TARGET_S / max(runtime, 1e-6))))

    def _room(self, node_id: str, work: Work) -> int:
        slots = work.shape.slots_on(self.nodes.get(node_id, {}))
        return slots * self._depth(node_id, work) - self._load[(node_id, work.shape)]

    def _usable(self, node_id: str) -> bool:
        return node_id not in self._unusable

    def _pick(self, work: Work, queued: int) -> tuple[str, bool] | None:
        """Where this attempt goes, and whether it is a trial; None when nowhere has room."""
        for node_id, held in self._leases.items():
            usable = held > 0 and node_id in self.nodes and node_id not in work.avoid
            if usable and self._room(node_id, work) > 0:
                return node_id, True
        free: dict[str, int] = {}
        fallback: dict[str, int] = {}
        for node_id in self.nodes:
            if not self._usable(node_id) or node_id in work.unplaceable:
                continue
            room = self._room(node_id, work)
            if room <= 0:
                continue
            (fallback if node_id in work.avoid else free)[node_id] = room
        # nodes this work failed on come last; a node too slow to help is left idle (a
        # faster one will free up first and finish sooner)
        for candidates in (free, fallback):
            useful = {n: r for n, r in candidates.items() if not self._too_slow(n, work, queued)}
            chosen = water_fill(useful, 1)
            if chosen:
                return chosen[0][0], False
        return None

    def _could_run(self, work: Work) -> bool:
        """Some usable node fits this work and Ray has not refused it there."""
        return any(
            self._usable(n) and n not in work.unplaceable and work.shape.slots_on(r) > 0
            for n, r in self.nodes.items()
        )

    def _starved(self, shape: Shape, waiting: bool, now: float) -> str | None:
        """Why calls of this shape must fail: no usable node (nor trial lease) could run
        them for ``capacity_wait_timeout``; None while there is capacity or time left."""
        if (
            not waiting
            or any(shape.slots_on(r) > 0 and self._usable(n) for n, r in self.nodes.items())
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
            f"{len(self._unusable)} excluded or on trial); add nodes, lower the request, or "
            "raise capacity_wait_timeout"
        )

    def _stranded(self, work: Work, now: float) -> str | None:
        """Why a call only refused nodes could take must fail, once it waited
        ``capacity_wait_timeout``; None while it may still wait."""
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
        if mine is None or mine <= _SLOW_FACTOR * self._fastest.get(work.kind, math.inf):
            return False  # the fast path: not clearly slower than the fastest node seen
        if self._clock() - self._learned_at.get(key, -math.inf) > _RELEARN_S:
            return False  # its pace is old news: one attempt finds out whether it recovered
        rate, best = 0.0, math.inf
        for other in self.nodes:
            if other == node_id or not self._usable(other) or other in work.unplaceable:
                continue
            runtime = self._runtime.get((other, work.kind))
            slots = work.shape.slots_on(self.nodes[other])
            if runtime is None or slots <= 0:
                continue
            rate += slots / max(runtime, 1e-6)
            best = min(best, runtime)
        # only a clearly slower node stands back (so the fastest one always takes work)
        return rate > 0 and mine > _SLOW_FACTOR * best and mine > queued / rate

    def _learn_runtime(self, attempt: Attempt, now: float) -> float:
        node_id = attempt.node_id
        start = attempt.launched_at
        if attempt.queued_behind:  # it waited in Ray for a slot on its node
            start = max(start, self._last_done.get(node_id, start))
        self._last_done[node_id] = now
        runtime = max(0.0, now - start)
        key = (node_id, attempt.work.kind)
        old = self._runtime.get(key)
        self._set_pace(key, runtime if old is None else (1 - _EWMA) * old + _EWMA * runtime, now)
        return runtime

    def _placed(self, node_id: str, name: str, now: float) -> None:
        """An attempt went to this node: a stale pace counts as fresh again, so a slow
        node that is tried again gets one attempt per ``_RELEARN_S``, not one per slot."""
        key = (node_id, name)
        if key in self._runtime and now - self._learned_at.get(key, now) > _RELEARN_S:
            self._learned_at[key] = now

    def _learn_lower_bound(self, attempt: Attempt, now: float) -> None:
        """A cancelled attempt (its twin won) ran at least this long on its node: a slow
        node's pace is learned even though its attempts never finish."""
        key = (attempt.node_id, attempt.work.kind)
        elapsed = now - attempt.launched_at
        if elapsed > self._runtime.get(key, 0.0):
            self._set_pace(key, elapsed, now)

    def _set_pace(self, key: tuple[str, str], runtime: float, now: float) -> None:
        name = key[1]
        old = self._runtime.get(key)
        self._runtime[key] = runtime
        self._learned_at[key] = now
        if runtime < self._fastest.get(name, math.inf) or old == self._fastest.get(name):
            self._fastest[name] = min(r for (_, n), r in self._runtime.items() if n == name)

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
        wanted = int(min(had * self.config.oom_memory_multiplier, self._memory_cap(work)))
        if wanted <= asked:
            return work.spec
        self._hungry[work.kind] = max(self._hungry.get(work.kind, 0), wanted)
        return work.spec.with_memory(wanted)

    def _memory_cap(self, work: Work) -> float:
        """The most memory of a node that could run this work at all."""
        return max(
            (
                r.get("memory", 0.0)
                for n, r in self.nodes.items()
                if n not in work.unplaceable and work.shape.slots_on(r) > 0
            ),
            default=0.0,
        )

    def _fed(self, work: Work) -> bool:
        """Give a call of a callable that ran out of memory the memory its retries got
        (evaluations of one objective need about the same); True when it changed."""
        wanted = min(self._hungry.get(work.kind, 0), int(self._memory_cap(work)))
        if float(work.spec.options.get("memory") or 0) >= wanted:
            return False
        work.spec = work.spec.with_memory(wanted)
        return True

    def _backup_node(self, work: Work, running_on: str, threshold: float) -> str | None:
        """A node for a straggler's backup: a free slot (no queueing) on another usable
        node whose pace for this callable is not itself straggling; the fastest first."""
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
        return sum(
            max(0, shape.slots_on(r) - self._load[(n, shape)])
            for n, r in self.nodes.items()
            if self._usable(n)
        )
