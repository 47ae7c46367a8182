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
import math
import statistics
import time
from collections.abc import Callable

__all__ = ["PhiAccrualDetector"]

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
        self._gaps: collections.deque[float] = collections.deque(
            [expected_interval, expected_interval * 1.5], maxlen=window
        )
        self._last: float | None = None

    @property
    def last_heartbeat(self) -> float | None:
        """Clock time of the last answer, None before the first."""
        return self._last

    def heartbeat(self, now: float | None = None) -> None:
        """An answer arrived."""
        now = self._clock() if now is None else now
        if self._last is not None and now > self._last:
            self._gaps.append(now - self._last)
        self._last = now

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
        mean = statistics.fmean(self._gaps)
        std = max(statistics.pstdev(self._gaps), mean * _MIN_STD_FRACTION, _MIN_STD_S)
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
        return statistics.fmean(self._gaps)
