"""The executor's side of an elastic cluster, and Ray's node table read off the loop.

``ElasticLink`` sends this driver's demand (what it would run at once, per request) to the
manager actor, which turns every driver's demand into the cluster's one
``request_resources`` call, and brings back the autoscaler's node types and the drain
deadlines of nodes about to go. ``NodeWatcher`` reads Ray's node table on a thread of its
own, so a GCS that does not answer (a restart) never holds up a ``submit()`` or the loop:
work goes on being launched onto the nodes already known. ``ColdWatch`` stands in for a
manager that is still starting: until its first view says it has read the drain list, the
executor reads the drain list and asks the autoscaler for its own demand itself. None of
them ever blocks its caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import ray

from ray_ft import raycompat
from ray_ft.core.autoscaling import NodeTypes
from ray_ft.core.events import DrainingChanged, Event, NodeTypesChanged
from ray_ft.core.work import Shape
from ray_ft.manager.demand import DemandBook
from ray_ft.nodes import alive_resources, request_resources

__all__ = ["ColdWatch", "ElasticLink", "NodeWatcher"]

log = logging.getLogger(__name__)

_SEND_EVERY_S = 1.0  # a busy executor's report (and look at the view) at least this often
_CHANGED_EVERY_S = 0.25  # a changed demand goes out at most this often (empty: at once)
_COLD_EVERY_S = 0.5  # a cold executor reads the drain list this often
_STALE_S = 30.0  # an unanswered view call this old is given up and sent again

T = TypeVar("T")


class ElasticLink:
    """Demand out, node types and drain deadlines in; one remote call at a time."""

    def __init__(
        self,
        handle: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cold: ColdWatch | None = None,
    ) -> None:
        self.handle = handle
        self.cold = cold  # the manager is new: watch for it until its first full view
        self.driver = uuid.uuid4().hex  # this executor's entry in the manager's demand book
        self._clock = clock
        self._wall = wall_clock
        self._sent: dict[Any, int] | None = None
        self._sent_at = -math.inf
        self._inflight: Any = None
        self._token: int | None = None
        self._types: NodeTypes | None = None

    def step(self, demand: Mapping[Shape, int]) -> list[Event]:
        """Take an arrived view (as scheduler events) and send the demand when due."""
        polled: list[Event] = []
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if ready:
                self._inflight = None
                try:
                    view = ray.get(ready[0])
                except Exception as exc:  # the manager restarts: say it all again
                    log.debug("elastic view failed: %s", exc)
                    self._sent, self._token = None, None
                else:
                    if view is not None:
                        polled.extend(self._events(view))
        request: dict[Any, int] = {}
        for shape, count in demand.items():
            request[shape.key] = request.get(shape.key, 0) + count
        if self.cold is not None:
            self.cold.offer(request)
            draining = self.cold.take()
            if draining is not None:
                polled.append(DrainingChanged(self._on_clock(draining)))
        now = self._clock()
        changed = request != self._sent
        due = now - self._sent_at >= (_CHANGED_EVERY_S if changed else _SEND_EVERY_S)
        if self._inflight is not None and now - self._sent_at < _STALE_S:
            # one call at a time: a manager slower than the period (busy, on a loaded head)
            # would otherwise have every answer replaced before it came, and never be heard;
            # an empty demand still goes at once (below: its answer carries the same view)
            due = False
        if due or (changed and not request):
            self._send(request, now)
        return polled

    def _send(self, request: dict[Any, int], now: float) -> None:
        try:
            ref = self.handle.elastic_view.remote(self.driver, request, self._token)
        except Exception as exc:
            log.debug("could not send the demand: %s", exc)
            return
        self._inflight, self._sent, self._sent_at = ref, request, now
        # a call that replaces one still due loses nothing: the token is taken only from
        # an answer read, so the next answer carries any newer view

    def _events(self, view: Mapping[str, Any]) -> list[Event]:
        """A new view as scheduler events: node types (when changed) and drain deadlines
        on the scheduler's clock (a deadline of 0 stays 0: none)."""
        self._token = view.get("token")
        if self.cold is not None:
            if not view.get("drains_read", True):
                # the manager has not read the drain list yet: the cold watch's holds
                return self._types_changed(view)
            self.cold.stop()
            self.cold = None
        return [*self._types_changed(view), DrainingChanged(self._on_clock(view.get("draining")))]

    def _types_changed(self, view: Mapping[str, Any]) -> list[Event]:
        raw = view.get("node_types")
        types = NodeTypes.from_json(raw) if raw is not None else None
        out: list[Event] = []
        if types != self._types:
            self._types = types
            out.append(NodeTypesChanged(types))
        return out

    def _on_clock(self, draining: Mapping[str, float] | None) -> dict[str, float]:
        """Drain deadlines (wall seconds) on the scheduler's clock (0 stays 0: none)."""
        now, wall = self._clock(), self._wall()
        return {
            node: (0.0 if not deadline else now + (float(deadline) - wall))
            for node, deadline in dict(draining or {}).items()
        }

    def close(self) -> None:
        if self.cold is not None:
            self.cold.stop()
            self.cold = None


class _OffLoop(Generic[T]):
    """A reading made on a daemon thread of its own, handed to the loop once: ``take()``
    returns the newest reading not yet taken (None: nothing new) and never waits."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._latest: T | None = None  # the newest reading not yet taken
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def take(self) -> T | None:
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _run(self) -> None:
        raise NotImplementedError


class ColdWatch(_OffLoop[dict[str, float]]):
    """A new manager's duties, done by the executor until that manager answers: the drain
    list read, and this driver's own demand asked of the autoscaler (``request_resources``),
    on a thread of its own so that a GCS away stalls nothing.

    Plain Ray's autoscaler sees a job's pending tasks and its raylets see a drain from the
    first second; a job must not lose either while ray_ft's manager starts. The request
    stands after the watch stops: the manager got the same demand and replaces it (and
    clears it when the demand ends). Two drivers cold at once overwrite each other's request
    until the manager answers (a second or two): the last call wins, as in Ray.
    """

    def __init__(
        self,
        *,
        read_draining: Callable[[], dict[str, float] | None] = raycompat.draining_nodes,
        request: Callable[[list[dict[str, float]]], None] = request_resources,
        every_s: float = _COLD_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("ray_ft-cold")  # its reading: the drain list (node -> wall deadline)
        self._read_draining = read_draining
        self._clock = clock
        self._offered_at = -math.inf
        self._request = request
        self._every_s = every_s
        self._demand: dict[Any, int] = {}
        self._asked: list[dict[str, float]] | None = None  # None: never asked
        self._seen: dict[str, float] = {}  # the last read passed on

    def offer(self, request: Mapping[Any, int]) -> None:
        """This driver's demand now (per resource request); asked for on the thread. A busy
        loop offers every round; the thread parks when offers stop (an idle executor)."""
        with self._lock:
            changed = dict(request) != self._demand
            self._demand = dict(request)
            now = self._clock()
            parked = now - self._offered_at > 4 * self._every_s
            self._offered_at = now
        self._start()
        if changed or parked:
            self._wake.set()

    def step(self) -> None:
        """One round: ask for a changed demand, read the drain list."""
        with self._lock:
            demand = dict(self._demand)
        book = DemandBook()
        book.report("self", demand, 0.0)
        bundles = book.bundles()
        if bundles != (self._asked or []):  # never asked: an empty demand asks nothing
            try:
                self._request(bundles)
            except Exception as exc:  # the GCS is away: asked again next round
                log.debug("request_resources failed: %s", exc)
            else:
                self._asked = bundles
        try:
            draining = self._read_draining()
        except Exception as exc:
            log.debug("get_draining_nodes failed: %s", exc)
            return
        if draining is None:  # this Ray cannot say: nothing to watch
            return
        with self._lock:
            if draining != self._seen:
                self._seen = dict(draining)
                self._latest = dict(draining)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.step()
            except Exception:
                log.exception("cold watch round failed")
            with self._lock:
                parked = self._clock() - self._offered_at > 4 * self._every_s
            self._wake.wait(None if parked else self._every_s)  # an offer wakes it
            self._wake.clear()


class NodeWatcher(_OffLoop[dict[str, dict[str, float]]]):
    """Ray's alive nodes, read on demand by a thread of its own (at most one read at once).

    ``want()`` asks for a fresh read and returns at once; ``take()`` returns the newest
    read not yet taken (None: nothing new). While the GCS is away the read simply takes
    longer; nothing waits for it.
    """

    def __init__(self, read: Callable[[], dict[str, dict[str, float]]] = alive_resources) -> None:
        super().__init__("ray_ft-nodes")
        self._read = read

    def want(self) -> None:
        self._start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                nodes = self._read()
            except Exception as exc:
                log.debug("ray.nodes() failed: %s", exc)
                continue
            with self._lock:
                self._latest = nodes
