"""FailureLog: every failure on record and each node's failures in the window (pure).

The manager decides what an event means (whose fault, whether a breaker opens); this room
keeps the record: the bounded history, the counts by type, each node's node-blamed events
within ``failure_window`` and the same counts sorted for the outlier test
(``ray_ft.manager.crowd.PeerCounts``). It owns its state file section
(:meth:`to_dict` / :meth:`from_dict`).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from ray_ft.failures import FailureEvent
from ray_ft.manager.crowd import PeerCounts
from ray_ft.manager.records import HISTORY_LIMIT

__all__ = ["FailureLog"]


class FailureLog:
    """The failures on record; a node's window counts toward the crowd while it is a peer."""

    __slots__ = ("counts", "history", "peers", "windows")

    def __init__(self) -> None:
        #: every failure on record, blamed or not (the last ``HISTORY_LIMIT``)
        self.history: collections.deque[FailureEvent] = collections.deque(maxlen=HISTORY_LIMIT)
        self.counts: collections.Counter[str] = collections.Counter()  #: by failure type
        #: node -> its node-blamed failures within ``failure_window``, oldest first
        self.windows: dict[str, list[FailureEvent]] = {}
        self.peers = PeerCounts()  #: the windows' sizes of the nodes that are peers

    def record(self, event: FailureEvent) -> None:
        """Keep an event in the history and counts, charging no node."""
        self.history.append(event)
        self.counts[event.failure_type.value] += 1

    def charge(
        self, node: str, event: FailureEvent, now: float, window_s: float, *, peer: bool
    ) -> int:
        """Record a node-blamed event in the node's window; returns the window's size."""
        self.record(event)
        window = self.window(node, now, window_s)
        window.append(event)
        if peer:
            self.peers.set(node, len(window))
        return len(window)

    def window(self, node: str, now: float, window_s: float) -> list[FailureEvent]:
        """The node's failures within ``window_s``, the expired dropped from the front
        (events arrive in time order: amortized O(1) per event)."""
        window = self.windows.setdefault(node, [])
        expired = 0
        while expired < len(window) and now - window[expired].timestamp > window_s:
            expired += 1
        if expired:
            del window[:expired]
        return window

    def stands_out(self, node: str) -> bool:
        """More than twice the failures of a typical other node in the window."""
        return self.peers.stands_out(node, len(self.windows.get(node, [])))

    def set_peer(self, node: str, peer: bool) -> None:
        """A dead node is nobody's peer; one alive again counts with its window."""
        if not peer:
            self.peers.set(node, None)
        elif node in self.windows:
            self.peers.set(node, len(self.windows[node]))

    def clear(self, node: str) -> None:
        """Forget the node's window (a trial succeeded, or it left for good)."""
        self.windows.pop(node, None)
        self.peers.set(node, None)

    def to_dict(self) -> dict[str, Any]:
        """The state file's section: JSON-ready (the peer counts are rebuilt)."""
        return {
            "worker_failures": {
                w: [e.to_dict() for e in events] for w, events in self.windows.items()
            },
            "history": [e.to_dict() for e in self.history],
            "failure_counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], dead: set[str] | frozenset[str]) -> FailureLog:
        """A :meth:`to_dict` section back; the nodes in ``dead`` are nobody's peers."""
        log = cls()
        log.windows = {
            w: [FailureEvent.from_dict(e) for e in events]
            for w, events in state.get("worker_failures", {}).items()
        }
        log.history.extend(FailureEvent.from_dict(e) for e in state.get("history", []))
        log.counts.update(state.get("failure_counts", {}))
        for node, events in log.windows.items():
            if node not in dead:
                log.peers.set(node, len(events))
        return log
