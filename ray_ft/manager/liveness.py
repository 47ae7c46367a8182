"""Liveness apart from health: an adaptive heartbeat failure detector per node.

The phi-accrual detector (Hayashibara et al.; Akka, Cassandra) learns the distribution of a
node's heartbeat inter-arrival times and turns the silence since the last answer into a
suspicion level phi = -log10(P(a gap this long)). A node at 100 % CPU answers later but
steadily, so its learned gaps widen and it stays alive; a frozen node stops answering
and phi climbs past the threshold within a few intervals. A floor keeps any node alive
for ``timeout_floor`` seconds after its last answer, whatever it learned. Pure: the clock
is injected.
"""

from __future__ import annotations

import collections
import heapq
import math
import time
from collections.abc import Callable, Iterable

__all__ = ["LivenessBook", "PhiAccrualDetector"]

_MIN_STD_FRACTION = 0.1  # std never below 10 % of the mean gap (Akka: min-std-deviation)
_MIN_STD_S = 0.1


class PhiAccrualDetector:
    """Suspicion that one node is down, from the gaps between its heartbeat answers."""

    def __init__(
        self,
        *,
        threshold: float = 8.0,
        timeout_floor: float = 2.0,
        expected_interval: float = 1.0,
        window: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold <= 0 or timeout_floor < 0 or expected_interval <= 0 or window < 2:
            msg = (
                f"PhiAccrualDetector(threshold={threshold}, timeout_floor={timeout_floor}, "
                f"expected_interval={expected_interval}, window={window}) is not valid; pass "
                "threshold > 0, timeout_floor >= 0, expected_interval > 0, window >= 2"
            )
            raise ValueError(msg)
        self.threshold = threshold
        self.timeout_floor = timeout_floor
        self._clock = clock
        # seeded with the expected gap so that a new node is judged before it has history
        self._gaps: collections.deque[float] = collections.deque(maxlen=window)
        self._sum = self._sumsq = 0.0  # running sums: phi is O(1), not O(window)
        for gap in (expected_interval, expected_interval * 1.5):
            self._add_gap(gap)
        self._last: float | None = None

    @property
    def last_heartbeat(self) -> float | None:
        """Clock time of the last answer, None before the first."""
        return self._last

    def heartbeat(self, now: float | None = None) -> None:
        """An answer arrived."""
        now = self._clock() if now is None else now
        if self._last is not None and now > self._last:
            self._add_gap(now - self._last)
        self._last = now

    def _add_gap(self, gap: float) -> None:
        if len(self._gaps) == self._gaps.maxlen:
            old = self._gaps[0]
            self._sum -= old
            self._sumsq -= old * old
        self._gaps.append(gap)
        self._sum += gap
        self._sumsq += gap * gap

    def _stats(self) -> tuple[float, float]:
        count = len(self._gaps)
        mean = self._sum / count
        variance = max(0.0, self._sumsq / count - mean * mean)
        return mean, max(math.sqrt(variance), mean * _MIN_STD_FRACTION, _MIN_STD_S)

    def suspect_at(self) -> float:
        """Clock time at which this node is judged down if no answer comes first (the
        floor and the phi threshold both passed); inf before the first answer."""
        if self._last is None:
            return math.inf
        mean, std = self._stats()
        return self._last + max(self.timeout_floor, mean + _y_for(self.threshold) * std)

    def forgive(self, seconds: float) -> None:
        """The observer itself stalled for ``seconds``: do not count that silence."""
        if self._last is not None and seconds > 0:
            self._last += seconds

    def silence(self, now: float | None = None) -> float:
        """Seconds since the last answer (0 before the first)."""
        now = self._clock() if now is None else now
        return 0.0 if self._last is None else max(0.0, now - self._last)

    def phi(self, now: float | None = None) -> float:
        """The suspicion level now: 1 means a 10 % chance of a gap this long, 8 one in 10^8."""
        silence = self.silence(now)
        mean, std = self._stats()
        y = (silence - mean) / std
        # logistic approximation of the normal tail (as Akka's detector uses)
        e = math.exp(-y * (1.5976 + 0.070566 * y * y)) if y > -30 else math.inf
        if silence > mean:
            return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
        return -math.log10(1.0 - 1.0 / (1.0 + e)) if math.isfinite(e) else 0.0

    def is_alive(self, now: float | None = None) -> bool:
        """False once phi passes the threshold and the floor has passed since the last answer."""
        if self._last is None:
            return True
        return self.silence(now) < self.timeout_floor or self.phi(now) < self.threshold

    def mean_gap(self) -> float:
        """The learned mean gap between answers, in seconds."""
        return self._stats()[0]


def _phi_of_y(y: float) -> float:
    e = math.exp(-y * (1.5976 + 0.070566 * y * y)) if y > -30 else math.inf
    if y > 0:
        return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
    return -math.log10(1.0 - 1.0 / (1.0 + e)) if math.isfinite(e) else 0.0


_Y_CACHE: dict[float, float] = {}


def _y_for(threshold: float) -> float:
    """The standardized silence at which phi reaches ``threshold`` (bisection, cached)."""
    y = _Y_CACHE.get(threshold)
    if y is None:
        low, high = -30.0, 60.0
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (mid, high) if _phi_of_y(mid) < threshold else (low, mid)
        y = _Y_CACHE[threshold] = high
    return y


class LivenessBook:
    """Heartbeat detectors of every node, judged per arrival, not per node.

    Each heartbeat re-arms its node's deadline (the time its detector would judge it down)
    on a heap; ``judge(now)`` pops only the deadlines that passed, so a wake-up costs
    O(arrivals + verdicts), never a scan of the cluster. Pure: times are passed in.
    """

    def __init__(self, make_detector: Callable[[], PhiAccrualDetector]) -> None:
        self._make = make_detector
        self.detectors: dict[str, PhiAccrualDetector] = {}
        self._deadlines: list[tuple[float, str]] = []
        self.down: set[str] = set()  # judged down, not answered since

    def heartbeat(self, node_id: str, now: float) -> bool:
        """An answer from the node; True when it had been judged down (it is back)."""
        detector = self.detectors.get(node_id)
        if detector is None:
            detector = self.detectors[node_id] = self._make()
        detector.heartbeat(now)
        heapq.heappush(self._deadlines, (detector.suspect_at(), node_id))
        if len(self._deadlines) > 4 * len(self.detectors) + 64:  # stale entries: compact
            self._deadlines = [(d.suspect_at(), n) for n, d in self.detectors.items()]
            heapq.heapify(self._deadlines)
        if node_id in self.down:
            self.down.discard(node_id)
            return True
        return False

    def judge(self, now: float) -> list[str]:
        """Nodes whose deadline passed with no answer since: newly judged down."""
        verdicts = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, node_id = heapq.heappop(self._deadlines)
            detector = self.detectors.get(node_id)
            if detector is None or node_id in self.down:
                continue
            if not detector.is_alive(now):
                self.down.add(node_id)
                verdicts.append(node_id)
            else:  # answered since, or not quite due: judge it when it is
                heapq.heappush(self._deadlines, (max(detector.suspect_at(), now + 0.01), node_id))
        return verdicts

    def recheck(self, node_id: str, at: float) -> None:
        """Judge this node again at ``at`` (its verdict was held back)."""
        self.down.discard(node_id)
        heapq.heappush(self._deadlines, (at, node_id))

    def forgive(self, seconds: float, now: float) -> None:
        """The observer stalled: shift every detector's last answer (O(nodes), rare)."""
        for node_id, detector in self.detectors.items():
            detector.forgive(seconds)
            heapq.heappush(self._deadlines, (detector.suspect_at(), node_id))

    def forget(self, node_ids: Iterable[str]) -> None:
        """Nodes that left: their detectors go (stale deadlines are skipped)."""
        for node_id in node_ids:
            self.detectors.pop(node_id, None)
            self.down.discard(node_id)
