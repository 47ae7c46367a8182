"""NodeTable: the scheduler's nodes, their load and pace, indexed so no decision rescans them.

It owns every per-node table (resources, usability, load per shape, pace per callable,
the attempts running there) and the indexes kept up to date on each event, as Dask's
scheduler keeps its ``idle`` and ``saturated`` sets:

- per (shape, callable): a heap of nodes by room (attempts it may still be handed), the
  nodes by pace (the fastest live one on top), and the summed rate of the usable ones;
- per shape: how many usable nodes fit it, their free slots, nodes by memory.

Room only grows on an event (an attempt ends, a pace improves, a node becomes usable),
which pushes a fresh heap entry; it shrinks silently (a launch, a pace that goes stale),
so a heap entry may overstate a node's room and is corrected when it reaches the top.
Every event costs O(log n); a placement pops the heap until a valid node is on top. A node
that leaves takes all of its entries in every table with it. Indexes are built on first
use (O(n) once) and at most ``_MAX_INDEXES`` are kept (least recently used).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping

from ray_ft.core.node_indexes import Room, ShapeIndex, WorkIndex
from ray_ft.core.pace import Paces
from ray_ft.core.work import Shape, Work

__all__ = ["NodeTable"]

QUEUE_TARGET_S = 0.25  # queued work per slot beyond the running attempt, in seconds
SLOW_FACTOR = 2.0  # a node this many times slower than the fastest may stand back
_MAX_INDEXES = 64
_PARK_S = 0.1  # a node too slow for a call is not looked at again for this long
Key = tuple[Shape, str]


class NodeTable:
    """Alive nodes, usability, load per (node, shape), pace per (node, callable)."""

    def __init__(
        self, clock: Callable[[], float], queue_depth: int, home: str | None = None
    ) -> None:
        self._clock = clock
        self.queue_depth = queue_depth
        #: the driver's own node: first among equally roomy nodes, as Ray's own scheduler
        #: prefers the local node (its idle worker is started: a first call runs at once)
        self.home = home
        self.nodes: dict[str, dict[str, float]] = {}
        self.unusable: frozenset[str] | set[str] = frozenset()
        # usable but under pressure (a degraded health verdict): a last resort, taking
        # work only when no ok node has room, and never more than a slot's worth
        self.degraded: frozenset[str] | set[str] = frozenset()
        self.load: Counter[tuple[str, Shape]] = Counter()
        self.paces = Paces()  #: pace per (node, callable), and the attempts in flight
        self.leases: Counter[str] = Counter()  # trial leases held, not yet used
        self._slots: dict[str, dict[Shape, int]] = {}  # slots per shape, per node (a cache)
        self._kinds_at: dict[str, set[str]] = {}  # callables with a pace or run per node
        self._shapes_at: dict[str, set[Shape]] = {}  # shapes with load per node
        self._index: OrderedDict[Key, WorkIndex] = OrderedDict()
        self._shape_index: OrderedDict[Shape, ShapeIndex] = OrderedDict()

    # -- events ----------------------------------------------------------------------------

    def set_nodes(self, nodes: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Ray's alive nodes; returns the ids that left (their tables are dropped)."""
        gone = [n for n in self.nodes if n not in nodes]
        for node_id in gone:
            self.remove(node_id)
        for node_id, resources in nodes.items():
            if self.nodes.get(node_id) != resources:
                if node_id in self.nodes:
                    self.remove(node_id)  # resources changed: re-add with the new ones
                self._add(node_id, dict(resources))
        return gone

    def remove(self, node_id: str) -> None:
        """A node left: every table forgets it (late reports about it find nothing)."""
        if node_id not in self.nodes:
            return
        self._account(node_id, -1)
        del self.nodes[node_id]
        self.paces.forget(node_id, self._kinds_at.pop(node_id, ()))
        for shape in self._shapes_at.pop(node_id, ()):
            self.load.pop((node_id, shape), None)
        self.leases.pop(node_id, None)
        self._slots.pop(node_id, None)
        if node_id in self.degraded:
            self.degraded = self.degraded - {node_id}
        self._compact()

    def set_unusable(self, unusable: frozenset[str] | set[str]) -> None:
        """Excluded or HALF_OPEN nodes take no ordinary work (O(changes))."""
        before = self.unusable
        changed = (set(before) ^ set(unusable)) & self.nodes.keys()
        for node_id in changed:
            self._account(node_id, -1)
        self.unusable = unusable
        for node_id in changed:
            self._account(node_id, +1)

    def set_degraded(self, degraded: frozenset[str] | set[str]) -> None:
        """Degraded nodes: placed last (O(changes x indexes)); the stale heap entries of a
        node whose tier changed are corrected when they reach the top."""
        changed = (set(self.degraded) ^ set(degraded)) & self.nodes.keys()
        self.degraded = degraded
        for node_id in changed:
            for shape, kind in list(self._index):
                self._push_room(node_id, shape, kind)

    def add_load(self, node_id: str, shape: Shape, delta: int) -> None:
        """An attempt of this shape started (+1) or ended (-1) on the node."""
        key = (node_id, shape)
        if node_id not in self.nodes:  # it left: its tables went with it
            self.load.pop(key, None)
            return
        slots = self.slots(node_id, shape)
        before = self.load[key]
        after = before + delta
        if after:
            self.load[key] = after
            self._shapes_at.setdefault(node_id, set()).add(shape)
        else:
            self.load.pop(key, None)
        shape_index = self._shape_index.get(shape)
        if shape_index is not None and self.usable(node_id):
            shape_index.free += max(0, slots - after) - max(0, slots - before)
        if delta < 0:  # more room for every callable of this shape
            for index_shape, kind in list(self._index):
                if index_shape == shape:
                    self._push_room(node_id, shape, kind)

    def unpick(self, node_id: str, shape: Shape, kind: str) -> None:
        """A node ``roomiest`` chose was not launched on after all (the call had been
        cancelled): its room, taken off the heap by the pick, goes back on it."""
        self._push_room(node_id, shape, kind)

    def started(self, node_id: str, kind: str, attempt_id: int, now: float) -> None:
        """An attempt of this callable was launched on the node."""
        self.paces.started(node_id, kind, attempt_id, now)
        self._kinds_at.setdefault(node_id, set()).add(kind)

    def stopped(self, node_id: str, kind: str, attempt_id: int) -> None:
        """An attempt of this callable left the node (finished, failed or dropped)."""
        self.paces.stopped(node_id, kind, attempt_id)

    def set_pace(self, node_id: str, kind: str, runtime: float, now: float) -> None:
        """The node's learned runtime for this callable."""
        if node_id not in self.nodes:
            return
        old = self.paces.set(node_id, kind, runtime, now)
        self._kinds_at.setdefault(node_id, set()).add(kind)
        usable = self.usable(node_id)
        for (shape, index_kind), index in self._index.items():
            if index_kind != kind:
                continue
            slots = shape.slots_on(self.nodes[node_id])
            if slots <= 0:
                continue
            if usable:
                index.rate += slots / max(runtime, 1e-6)
                if old is not None:
                    index.rate = max(0.0, index.rate - slots / max(old, 1e-6))
            heapq.heappush(index.fast, (runtime, node_id))
            if len(index.fast) > self._bound():  # stale entries: compact
                index.fast = self._fresh(index.fast, kind)
            self._push_room(node_id, shape, kind)

    def learn(
        self,
        node_id: str,
        kind: str,
        launched_at: float,
        queued_behind: bool,
        now: float,
        members: int = 1,
    ) -> float:
        """An attempt (a batch of ``members`` calls) launched at ``launched_at`` finished
        now: fold its runtime per call into the node's pace for this callable (EWMA);
        returns that runtime."""
        runtime, pace = self.paces.fold(
            node_id, kind, launched_at, queued_behind, now, members, live=node_id in self.nodes
        )
        self.set_pace(node_id, kind, pace, now)
        return runtime

    def learn_lower_bound(self, node_id: str, kind: str, launched_at: float, now: float) -> None:
        """A cancelled attempt (its twin won) ran at least this long on its node: a slow
        node's pace is learned even though its attempts never finish."""
        elapsed = now - launched_at
        if elapsed > (self.paces.get(node_id, kind) or 0.0):
            self.set_pace(node_id, kind, elapsed, now)

    # -- questions -------------------------------------------------------------------------

    def usable(self, node_id: str) -> bool:
        """Alive and taking ordinary work."""
        return node_id in self.nodes and node_id not in self.unusable

    def depth(self, node_id: str, shape: Shape, kind: str) -> int:
        """Attempts per slot handed to Ray at once on this node, from its pace."""
        if shape.timed or node_id in self.degraded:
            return 1  # a timed attempt's clock must start when it runs; a degraded node
            # gets no queue beyond its free slots
        runtime = self.paces.get(node_id, kind)
        if runtime is None:
            return 1  # learn the pace first
        oldest = self.paces.oldest_running(node_id, kind)
        if oldest is not None:  # an attempt running longer than the estimate: stale pace
            runtime = max(runtime, self._clock() - oldest)
        return max(1, min(self.queue_depth, math.ceil(QUEUE_TARGET_S / max(runtime, 1e-6))))

    def slots(self, node_id: str, shape: Shape) -> int:
        """How many attempts of this shape fit on the node at once (cached per node)."""
        cache = self._slots.get(node_id)
        if cache is None:
            if node_id not in self.nodes:
                return 0
            cache = self._slots[node_id] = {}
        slots = cache.get(shape)
        if slots is None:
            slots = cache[shape] = shape.slots_on(self.nodes[node_id])
            if len(cache) > _MAX_INDEXES:
                cache.clear()
        return slots

    def room(self, node_id: str, shape: Shape, kind: str) -> int:
        """Attempts of this shape and callable the node may still be handed."""
        load = self.load.get((node_id, shape), 0)
        return self.slots(node_id, shape) * self.depth(node_id, shape, kind) - load

    def roomiest(self, work: Work, acceptable: Callable[[str], bool]) -> str | None:
        """The node with the most room for this work (ties: the smallest id) among the
        usable ones Ray has not refused and ``acceptable`` takes; nodes the work failed on
        come last. None when no such node has room."""
        shape, kind = work.shape, work.kind
        index = self._placement(shape, kind)
        heap = index.room
        now = self._clock()
        if index.parked and now - index.parked_at >= _PARK_S:
            for entry in index.parked:
                heapq.heappush(heap, entry)
            index.parked = []
        aside: list[Room] = []
        fallback: Room | None = None
        chosen: Room | None = None
        while heap:
            tier, key, _, node_id = heap[0]
            room = self.room(node_id, shape, kind) if self.usable(node_id) else 0
            if room <= 0:
                heapq.heappop(heap)  # comes back with an event that gives it room
                continue
            current = self._tier(node_id)
            if -key != room or tier != current:  # less room than listed, or tier changed
                heapq.heapreplace(heap, self._room_entry(node_id, room))
                continue
            entry = heapq.heappop(heap)
            if node_id not in work.unplaceable and not acceptable(node_id):
                if not index.parked:
                    index.parked_at = now
                index.parked.append(entry)
                continue
            if node_id in work.unplaceable:
                aside.append(entry)
                continue
            if node_id in work.avoid:
                if fallback is None:
                    fallback = entry
                else:
                    aside.append(entry)
                continue
            chosen = entry
            break
        if chosen is None:
            chosen, fallback = fallback, None
        if fallback is not None:
            aside.append(fallback)
        if chosen is not None and -chosen[1] > 1:  # the caller launches there: one less room
            aside.append((chosen[0], chosen[1] + 1, chosen[2], chosen[3]))
        for entry in aside:
            heapq.heappush(heap, entry)
        return None if chosen is None else chosen[3]

    def _tier(self, node_id: str) -> int:
        """0 for an ok node, 1 for a degraded one (placed after every ok node with room)."""
        return 1 if node_id in self.degraded else 0

    def _room_entry(self, node_id: str, room: int) -> Room:
        return (self._tier(node_id), -room, 0 if node_id == self.home else 1, node_id)

    def fastest(self, shape: Shape, kind: str) -> float:
        """The lowest pace for this callable among usable live nodes that fit the shape."""
        heap = self._placement(shape, kind).fast
        while heap:
            runtime, node_id = heap[0]
            if self.usable(node_id) and self.paces.get(node_id, kind) == runtime:
                return runtime
            heapq.heappop(heap)  # left, unusable or re-paced: a fresh entry exists if due
        return math.inf

    def rate(self, shape: Shape, kind: str) -> float:
        """Summed pace (slots / runtime) of the usable nodes with a known pace."""
        return self._placement(shape, kind).rate

    def fits_anywhere(self, shape: Shape) -> bool:
        """Some usable live node has a slot of this shape."""
        return self._capacity(shape).fits > 0

    def could_run(self, work: Work) -> bool:
        """Some usable node fits this work and Ray has not refused it there."""
        refused = sum(
            1 for n in work.unplaceable if self.usable(n) and work.shape.slots_on(self.nodes[n]) > 0
        )
        return self._capacity(work.shape).fits - refused > 0

    def total_slots(self, shape: Shape) -> int:
        """Slots of this shape on the usable nodes, busy or not."""
        return self._capacity(shape).slots

    def free_slots(self, shape: Shape) -> int:
        """Slots of this shape with nothing in them on the usable nodes."""
        return self._capacity(shape).free

    def memory_cap(self, work: Work) -> float:
        """The most memory of a live node that could run this work at all."""
        heap = self._capacity(work.shape).memory
        aside = []
        cap = 0.0
        while heap:
            key, node_id = heap[0]
            resources = self.nodes.get(node_id)
            if resources is None or resources.get("memory", 0.0) != -key:
                heapq.heappop(heap)
                continue
            if node_id in work.unplaceable:
                aside.append(heapq.heappop(heap))
                continue
            cap = -key
            break
        for entry in aside:
            heapq.heappush(heap, entry)
        return cap

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def sizes(self) -> dict[str, int]:
        """Entries per table (bounded-state checks)."""
        return {
            "nodes": len(self.nodes),
            "load": len(self.load),
            "runtime": len(self.paces.runtime),
            "running": len(self.paces.running),
            "last_done": len(self.paces.last_done),
            "provisional": len(self.paces.provisional),
            "indexes": len(self._index) + len(self._shape_index),
            "index_entries": sum(len(i.room) + len(i.fast) for i in self._index.values())
            + sum(len(s.memory) for s in self._shape_index.values()),
        }

    # -- internals ---------------------------------------------------------------------------

    def _add(self, node_id: str, resources: dict[str, float]) -> None:
        self.nodes[node_id] = resources
        self._account(node_id, +1)
        for shape, index in self._shape_index.items():
            if shape.slots_on(resources) > 0:
                heapq.heappush(index.memory, (-resources.get("memory", 0.0), node_id))
                self._compact_memory(shape, index)

    def _bound(self) -> int:
        """Entries a heap may hold before its stale ones are dropped: a small multiple of
        the live nodes, so every index shrinks with the cluster (rebuilt in O(live) once
        stale entries outnumber live ones: amortised O(1) per event)."""
        return 4 * len(self.nodes) + 64

    def _compact_memory(self, shape: Shape, index: ShapeIndex) -> None:
        if len(index.memory) > self._bound():
            index.memory = [
                (-r.get("memory", 0.0), n) for n, r in self.nodes.items() if shape.slots_on(r) > 0
            ]
            heapq.heapify(index.memory)

    def _compact(self) -> None:
        """After a node left: any heap past its bound is rebuilt from the live nodes."""
        bound = self._bound()
        for shape, capacity in self._shape_index.items():
            self._compact_memory(shape, capacity)
        for (shape, kind), index in self._index.items():
            if len(index.room) + len(index.parked) > bound:
                index.room, index.parked = self._build(shape, kind).room, []
            if len(index.fast) > bound:
                index.fast = self._fresh(index.fast, kind)

    def _account(self, node_id: str, sign: int) -> None:
        """Add (+1) or take out (-1) a node's share of every aggregate while usable."""
        if not self.usable(node_id):
            return
        resources = self.nodes[node_id]
        for shape, capacity in self._shape_index.items():
            slots = shape.slots_on(resources)
            if slots > 0:
                capacity.fits += sign
                capacity.slots += sign * slots
                capacity.free += sign * max(0, slots - self.load[(node_id, shape)])
        for (shape, kind), index in self._index.items():
            slots = shape.slots_on(resources)
            runtime = self.paces.get(node_id, kind)
            if slots > 0 and runtime is not None:
                index.rate = max(0.0, index.rate + sign * slots / max(runtime, 1e-6))
            if sign > 0 and slots > 0:
                self._push_room(node_id, shape, kind)
                if runtime is not None:
                    heapq.heappush(index.fast, (runtime, node_id))

    def _push_room(self, node_id: str, shape: Shape, kind: str) -> None:
        index = self._index.get((shape, kind))
        if index is None or not self.usable(node_id):
            return
        room = self.room(node_id, shape, kind)
        if room > 0:
            heapq.heappush(index.room, self._room_entry(node_id, room))
            if len(index.room) > self._bound():  # stale entries: compact
                self._index[(shape, kind)] = self._build(shape, kind)

    def _placement(self, shape: Shape, kind: str) -> WorkIndex:
        key = (shape, kind)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = self._build(shape, kind)
            if len(self._index) > _MAX_INDEXES:
                self._index.popitem(last=False)
        else:
            self._index.move_to_end(key)
        return index

    def _build(self, shape: Shape, kind: str) -> WorkIndex:
        """All nodes once: O(n) for the first decision about this (shape, callable)."""
        index = WorkIndex()
        for node_id, resources in self.nodes.items():
            slots = shape.slots_on(resources)
            if slots <= 0 or not self.usable(node_id):
                continue
            room = self.room(node_id, shape, kind)
            if room > 0:
                index.room.append(self._room_entry(node_id, room))
            runtime = self.paces.get(node_id, kind)
            if runtime is not None:
                index.fast.append((runtime, node_id))
                index.rate += slots / max(runtime, 1e-6)
        heapq.heapify(index.room)
        heapq.heapify(index.fast)
        return index

    def _fresh(self, fast: list[tuple[float, str]], kind: str) -> list[tuple[float, str]]:
        """One entry per node with its current pace (an unchanged pace pushed again leaves
        equal duplicates, which a value check alone would keep forever)."""
        current = {n: self.paces.get(n, kind) for _, n in fast}
        heap = [(r, n) for n, r in current.items() if r is not None]
        heapq.heapify(heap)
        return heap

    def _capacity(self, shape: Shape) -> ShapeIndex:
        index = self._shape_index.get(shape)
        if index is not None:
            self._shape_index.move_to_end(shape)
            return index
        index = ShapeIndex()
        for node_id, resources in self.nodes.items():
            slots = shape.slots_on(resources)
            if slots <= 0:
                continue
            index.memory.append((-resources.get("memory", 0.0), node_id))
            if self.usable(node_id):
                index.fits += 1
                index.slots += slots
                index.free += max(0, slots - self.load[(node_id, shape)])
        heapq.heapify(index.memory)
        self._shape_index[shape] = index
        if len(self._shape_index) > _MAX_INDEXES:
            self._shape_index.popitem(last=False)
        return index
