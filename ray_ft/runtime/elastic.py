"""The executor's side of an elastic cluster, and Ray's node table read off the loop.

``ElasticLink`` sends this driver's demand (what it would run at once, per request) to the
manager actor, which turns every driver's demand into the cluster's one
``request_resources`` call, and brings back the autoscaler's node types and the drain
deadlines of nodes about to go. ``NodeWatcher`` reads Ray's node table on a thread of its
own, so a GCS that does not answer (a restart) never holds up a ``submit()`` or the loop:
work goes on being launched onto the nodes already known. Neither ever blocks its caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import ray

from ray_ft.core.elastic import NodeTypes
from ray_ft.core.work import Shape
from ray_ft.nodes import alive_resources

__all__ = ["ElasticLink", "NodeWatcher"]

log = logging.getLogger(__name__)

_SEND_EVERY_S = 1.0  # a busy executor's report (and look at the view) at least this often
_CHANGED_EVERY_S = 0.25  # a changed demand goes out at most this often (empty: at once)


class ElasticLink:
    """Demand out, node types and drain deadlines in; one remote call at a time."""

    def __init__(
        self,
        handle: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.handle = handle
        self.driver = uuid.uuid4().hex  # this executor's entry in the manager's demand book
        self._clock = clock
        self._wall = wall_clock
        self._sent: dict[Any, int] | None = None
        self._sent_at = -math.inf
        self._inflight: Any = None
        self._token: int | None = None
        self._types: NodeTypes | None = None

    def step(self, demand: Mapping[Shape, int]) -> list[tuple[str, Any]]:
        """Take an arrived view (as scheduler events) and send the demand when due."""
        polled: list[tuple[str, Any]] = []
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
        now = self._clock()
        changed = request != self._sent
        due = now - self._sent_at >= (_CHANGED_EVERY_S if changed else _SEND_EVERY_S)
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
        # an empty demand that went out replaces any answer still due: both carry the view

    def _events(self, view: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """A new view as scheduler events: node types (when changed) and drain deadlines
        on the scheduler's clock (a deadline of 0 stays 0: none)."""
        self._token = view.get("token")
        raw = view.get("node_types")
        types = NodeTypes.from_json(raw) if raw is not None else None
        out: list[tuple[str, Any]] = []
        if types != self._types:
            self._types = types
            out.append(("node_types", types))
        now, wall = self._clock(), self._wall()
        draining = {
            node: (0.0 if not deadline else now + (float(deadline) - wall))
            for node, deadline in dict(view.get("draining") or {}).items()
        }
        out.append(("draining", draining))
        return out


class NodeWatcher:
    """Ray's alive nodes, read on demand by a thread of its own (at most one read at once).

    ``want()`` asks for a fresh read and returns at once; ``take()`` returns the newest
    read not yet taken (None: nothing new). While the GCS is away the read simply takes
    longer; nothing waits for it.
    """

    def __init__(self, read: Callable[[], dict[str, dict[str, float]]] = alive_resources) -> None:
        self._read = read
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, float]] | None = None
        self._thread: threading.Thread | None = None

    def want(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ray_ft-nodes", daemon=True)
            self._thread.start()
        self._wanted.set()

    def take(self) -> dict[str, dict[str, float]] | None:
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    def stop(self) -> None:
        self._stopped.set()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopped.is_set():
                return
            try:
                nodes = self._read()
            except Exception as exc:
                log.debug("ray.nodes() failed: %s", exc)
                continue
            with self._lock:
                self._latest = nodes
