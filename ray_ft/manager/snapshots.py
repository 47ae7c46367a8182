"""Exclusion snapshots sent as deltas: an executor holding version T gets what changed since T.

The manager keeps its last few snapshot changes (``SnapshotLog``); a poll names the version
the executor holds and the answer is None (unchanged), a delta (only the node ids that
joined or left each list) or, when the version is unknown or too old, the whole snapshot.
So 50 executors polling a 1,000-node cluster cost the manager O(changes), not
O(executors x nodes). ``apply_delta`` rebuilds the snapshot on the executor's side.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from typing import Any

__all__ = ["SET_KEYS", "SnapshotCache", "SnapshotLog", "apply_delta"]

SET_KEYS = ("excluded", "failed", "dead", "degraded")  # lists of node ids, sent as deltas
_KEEP = 64  # changes remembered; an executor further behind gets the whole snapshot


class SnapshotCache:
    """The manager's last exclusion snapshot, kept until its version moves (or an OPEN
    breaker is due to turn HALF_OPEN), and the log of what changed between snapshots."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex[:8]  #: a new manager (restart, new config) starts over
        self.snapshot: dict[str, Any] | None = None  #: the last one built
        self._version = -1  # the manager's version it was built at
        self._due = math.inf  # when an OPEN breaker turns HALF_OPEN: rebuild then
        self.log = SnapshotLog()

    def current(self, version: int, now: float) -> dict[str, Any] | None:
        """The snapshot, when it still stands at the manager's ``version`` and time ``now``."""
        if self.snapshot is not None and self._version == version and now < self._due:
            return self.snapshot
        return None

    def store(self, version: int, due: float, lists: dict[str, Any]) -> dict[str, Any]:
        """A new snapshot of ``lists`` at ``version``, named by its token; valid until ``due``."""
        old, self.snapshot = self.snapshot, {**lists, "token": f"{self.epoch}:{version}"}
        self.log.record(old, self.snapshot)
        self._version, self._due = version, due
        return self.snapshot


class SnapshotLog:
    """The last ``keep`` changes between consecutive snapshots, each keyed by its token."""

    def __init__(self, keep: int = _KEEP) -> None:
        self._changes: deque[tuple[str, str, dict[str, tuple[list[str], list[str]]]]] = deque(
            maxlen=keep
        )
        self._position: dict[str, int] = {}  # token -> index of the change that left it
        self._dropped = 0  # changes pushed out of the deque (indexes stay absolute)

    def record(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """A new snapshot replaced ``old``: remember what changed (O(size of the lists))."""
        if old is None or old["token"] == new["token"]:
            return
        change = {}
        for key in SET_KEYS:
            before, after = set(old.get(key, ())), set(new.get(key, ()))
            if before != after:
                change[key] = (sorted(after - before), sorted(before - after))
        if len(self._changes) == self._changes.maxlen:
            gone_from, _, _ = self._changes.popleft()
            self._position.pop(gone_from, None)
            self._dropped += 1
        self._position[old["token"]] = self._dropped + len(self._changes)
        self._changes.append((old["token"], new["token"], change))

    def since(self, token: str | None, current: dict[str, Any]) -> dict[str, Any] | None:
        """What an executor holding ``token`` needs: None (it is current), a delta, or the
        whole snapshot (no token, or one older than the log remembers)."""
        if token is not None and token == current["token"]:
            return None
        start = None if token is None else self._position.get(token)
        if start is None:
            return current
        chain = list(self._changes)[start - self._dropped :]
        if not chain or chain[-1][1] != current["token"]:
            return current  # the log does not reach the current snapshot: send it whole
        first: dict[str, dict[str, bool]] = {}  # node -> was it there at the start
        last: dict[str, dict[str, bool]] = {}
        for _, _, change in chain:
            for key, (added, removed) in change.items():
                for node_id in added:
                    first.setdefault(key, {}).setdefault(node_id, False)
                    last.setdefault(key, {})[node_id] = True
                for node_id in removed:
                    first.setdefault(key, {}).setdefault(node_id, True)
                    last.setdefault(key, {})[node_id] = False
        delta: dict[str, Any] = {}
        for key, final in last.items():
            added = sorted(n for n, now in final.items() if now and not first[key][n])
            removed = sorted(n for n, now in final.items() if not now and first[key][n])
            if added or removed:
                delta[key] = (added, removed)
        return {
            "token": current["token"],
            "base": token,
            "delta": delta,
            "half_open": current.get("half_open", {}),
        }


def apply_delta(base: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The snapshot ``answer`` describes, given the executor's ``base`` (whole answers pass
    through). Raises ValueError when the delta was computed from another version."""
    if "delta" not in answer:
        return answer
    if base.get("token") != answer["base"]:
        msg = f"delta from {answer['base']!r} cannot apply to {base.get('token')!r}"
        raise ValueError(msg)
    merged: dict[str, Any] = {"token": answer["token"], "half_open": answer["half_open"]}
    for key in SET_KEYS:
        nodes = set(base.get(key, ()))
        added, removed = answer["delta"].get(key, ((), ()))
        nodes.difference_update(removed)
        nodes.update(added)
        merged[key] = sorted(nodes)
    return merged
