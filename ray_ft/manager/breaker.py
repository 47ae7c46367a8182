"""CircuitBreaker: a per-node state machine CLOSED -> OPEN -> HALF_OPEN -> CLOSED/OPEN.

Time comes from an injected clock (monotonic by default) so every transition is testable
without sleeping. The breaker never wraps the protected call: callers ask
``allow_request()`` and report the outcome, so no lock is held across remote work.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any

from ray_ft._errors import invalid

__all__ = ["BreakerListener", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.StrEnum):
    """Breaker states; members compare equal to the strings "CLOSED", "OPEN", "HALF_OPEN"."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


BreakerListener = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """Keeps work off a failing node; after ``timeout`` seconds admits trial calls."""

    def __init__(
        self,
        timeout: float = 300.0,
        *,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if timeout < 0:
            msg = f"timeout={timeout!r} is negative; pass seconds >= 0"
            raise ValueError(msg)
        if half_open_max_calls < 1:
            raise invalid("half_open_max_calls", half_open_max_calls, ">= 1")
        self.timeout = float(timeout)
        self.half_open_max_calls = half_open_max_calls
        self.name = name
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trials_in_flight = 0
        self._listeners: list[BreakerListener] = []
        self._lock = threading.RLock()

    def reconfigure(self, timeout: float, half_open_max_calls: int) -> None:
        """New settings for this breaker; its state and history stay."""
        if half_open_max_calls < 1:
            raise invalid("half_open_max_calls", half_open_max_calls, ">= 1")
        self.timeout = float(timeout)
        self.half_open_max_calls = half_open_max_calls

    # -- observation -------------------------------------------------------------------

    def reopens_at(self) -> float:
        """Clock time at which an OPEN breaker turns HALF_OPEN (inf when not OPEN)."""
        if self._state is not BreakerState.OPEN:
            return float("inf")
        return self._opened_at + self.timeout

    @property
    def state(self) -> BreakerState:
        """Current state; an OPEN breaker whose timeout has passed reads HALF_OPEN."""
        with self._lock:
            self._advance()
            return self._state

    def is_open(self) -> bool:
        """True while the breaker refuses all work (OPEN, not yet HALF_OPEN)."""
        return self.state is BreakerState.OPEN

    def trials_available(self) -> int:
        """Trial calls a HALF_OPEN breaker would still admit (0 when OPEN, -1 when CLOSED)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return -1
        if state is BreakerState.OPEN:
            return 0
        return max(0, self.half_open_max_calls - self._trials_in_flight)

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` on every transition."""
        self._listeners.append(listener)

    # -- transitions -------------------------------------------------------------------

    def open(self) -> None:
        """Trip the breaker: refuse work until ``timeout`` has passed."""
        with self._lock:
            self._opened_at = self._clock()
            self._trials_in_flight = 0
            self._set(BreakerState.OPEN)

    def close(self) -> None:
        """Reset to CLOSED: the node takes work again."""
        with self._lock:
            self._trials_in_flight = 0
            self._set(BreakerState.CLOSED)

    def allow_request(self) -> bool:
        """Ask to send one call; in HALF_OPEN this takes one of the trial slots."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                return False
            if self._trials_in_flight < self.half_open_max_calls:
                self._trials_in_flight += 1
                return True
            return False

    def record_success(self) -> None:
        """A call succeeded; a successful trial closes a HALF_OPEN breaker."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.HALF_OPEN:
                self.close()

    def record_failure(self) -> None:
        """A call failed; a failed trial reopens a HALF_OPEN breaker.

        In CLOSED a single failure changes nothing: when to open is decided by the
        failure window kept by FaultToleranceManager, in one place.
        """
        with self._lock:
            self._advance()
            if self._state is BreakerState.HALF_OPEN:
                self.open()

    def release_trial(self) -> None:
        """Give back a trial slot whose call ended without a verdict (cancelled, abandoned)."""
        with self._lock:
            if self._trials_in_flight > 0:
                self._trials_in_flight -= 1

    # -- persistence -------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-serializable state; OPEN time is stored as seconds left (clocks differ)."""
        with self._lock:
            self._advance()
            remaining = 0.0
            if self._state is BreakerState.OPEN:
                remaining = max(0.0, self.timeout - (self._clock() - self._opened_at))
            return {
                "state": self._state.value,
                "open_remaining": remaining,
                "timeout": self.timeout,
                "half_open_max_calls": self.half_open_max_calls,
            }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`get_state`; trials in flight are not carried over."""
        with self._lock:
            self.timeout = float(state.get("timeout", self.timeout))
            self.half_open_max_calls = int(
                state.get("half_open_max_calls", self.half_open_max_calls)
            )
            new = BreakerState(state["state"])
            remaining = float(state.get("open_remaining", 0.0))
            self._opened_at = self._clock() - (self.timeout - remaining)
            self._trials_in_flight = 0
            self._state = new

    def __getstate__(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        del data["_lock"]
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value})"

    # -- internals ---------------------------------------------------------------------

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.timeout:
            self._trials_in_flight = 0
            self._set(BreakerState.HALF_OPEN)

    def _set(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        if old is not new:
            for listener in list(self._listeners):
                listener(self, old, new)
