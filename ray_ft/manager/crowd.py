"""A node judged against the crowd: the outlier test and the two mass guards (pure).

A node's failures open its breaker only while it stands out from its peers (a median kept
sorted, O(log n) per event); when most nodes look failed at once the observer is suspected
(Kubernetes' rule), and when most are degraded at once what they share is said once.
"""

from __future__ import annotations

import bisect
import collections
import logging
import re
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

__all__ = ["MASS_MIN", "DegradedCrowd", "ObserverGuard", "PeerCounts", "median_without"]

MASS_MIN = 3  #: a majority of at least this many nodes at once is a mass event


class PeerCounts:
    """Failures in the window per node that has had one (not dead), and the same counts
    sorted, so that the outlier test reads a median in O(log n) instead of recounting."""

    __slots__ = ("count_of", "sorted_counts")

    def __init__(self) -> None:
        self.count_of: dict[str, int] = {}  #: node -> its failures in the window
        self.sorted_counts: list[int] = []  #: the same counts, ascending

    def set(self, worker_id: str, count: int | None) -> None:
        """Keep the sorted counts in step with one node's (None: out of them)."""
        old = self.count_of.pop(worker_id, None)
        if old is not None:
            del self.sorted_counts[bisect.bisect_left(self.sorted_counts, old)]
        if count is not None:
            self.count_of[worker_id] = count
            bisect.insort(self.sorted_counts, count)

    def clear(self) -> None:
        self.count_of.clear()
        self.sorted_counts.clear()

    def stands_out(self, worker_id: str, mine: int) -> bool:
        """More than twice the failures of a typical other node (another node's count is
        trimmed when its own window is next touched, so it errs high: toward not
        excluding); True when there is no other node."""
        median = median_without(self.sorted_counts, self.count_of.get(worker_id))
        return True if median is None else mine > 2 * median


def median_without(counts: list[int], mine: int | None) -> float | None:
    """The median of sorted ``counts`` with one entry equal to ``mine`` (this node's own)
    left out; None when no other node is left. O(1): positions shift past the gap."""
    size = len(counts) - (mine is not None)
    if size <= 0:
        return None
    gap = bisect.bisect_left(counts, mine) if mine is not None else len(counts)

    def at(position: int) -> int:  # the position-th of the others
        return counts[position if position < gap else position + 1]

    middle = size // 2
    if size % 2:
        return float(at(middle))
    return (at(middle - 1) + at(middle)) / 2


class ObserverGuard:
    """While a majority of the live nodes, at least three, would look failed at once, the
    observer (the manager, its node, its network) is the likelier fault."""

    __slots__ = ("suspect",)

    def __init__(self) -> None:
        self.suspect = False  #: exclusions by liveness are held back

    def check(self, failing: int, live: int, *, extra: int) -> bool:
        """True (and a WARNING once) when ``failing`` plus ``extra`` more would be most of
        ``live``; with ``extra=0`` it also clears the suspicion once few enough look failed."""
        failing += extra
        suspect = failing >= MASS_MIN and failing > live / 2
        if suspect and not self.suspect:
            log.warning(
                "%d of %d nodes would look failed at once: suspecting ray_ft's own manager "
                "or its network rather than the nodes; excluding no more nodes until fewer "
                "look failed",
                failing,
                live,
            )
        elif not suspect and self.suspect and extra == 0:
            log.warning("fewer nodes look failed (%d of %d): node exclusions resume", failing, live)
        if extra == 0 or suspect:
            self.suspect = suspect
        return suspect


class DegradedCrowd:
    """The degraded nodes (kept per event, O(1)), and what most of them share while most
    nodes, at least three, are degraded at once: said once at WARNING, and when it ends."""

    __slots__ = ("nodes", "shared")

    def __init__(self) -> None:
        self.nodes: set[str] = set()  #: nodes whose status is DEGRADED
        #: e.g. "disk above 95% on 3 of 3 nodes" while most are degraded at once, else None
        self.shared: str | None = None

    def note(
        self, worker_id: str, degraded: bool, live: int, reasons: Mapping[str, list[str]]
    ) -> None:
        """One node's status changed; ``live`` nodes are not dead; ``reasons`` by node."""
        if degraded:
            self.nodes.add(worker_id)
        else:
            self.nodes.discard(worker_id)
        mass = len(self.nodes) >= MASS_MIN and len(self.nodes) > live / 2
        if mass and self.shared is None:
            self.shared = _shared_reason(self.nodes, live, reasons)  # O(degraded), once
            log.warning(
                "%s: most nodes are degraded at once; they keep taking work (ok nodes first) "
                "instead of the job stalling",
                self.shared,
            )
        elif not mass and self.shared is not None:
            self.shared = None
            log.warning("fewer nodes are degraded (%d of %d)", len(self.nodes), live)


def _shared_reason(nodes: Iterable[str], live: int, reasons: Mapping[str, list[str]]) -> str:
    """The reason most degraded nodes share, e.g. 'disk above 95% on 3 of 3 nodes'."""
    kinds: collections.Counter[str] = collections.Counter()
    count = 0
    for worker_id in nodes:
        count += 1
        kinds.update({_reason_kind(r) for r in reasons.get(worker_id, ())})
    if not kinds:
        return f"{count} of {live} nodes degraded"
    kind, many = kinds.most_common(1)[0]
    return f"{kind} on {many} of {live} nodes"


def _reason_kind(reason: str) -> str:
    """A health reason without this node's own reading: 'disk at 97.2% exceeds 95%' ->
    'disk above 95%' (so that nodes' reasons compare)."""
    match = re.fullmatch(r"(.+) at [\d.]+ ?(%|C) exceeds ([\d.]+ ?(?:%|C))", reason)
    if match:
        return f"{match[1]} above {match[3]}"
    return re.sub(r"\d+(\.\d+)?", "N", reason)
