"""RetryPolicy: whether and when to retry, as a pure function of attempt and failure type.

Nothing here sleeps: a RetryDecision carries the delay and the caller schedules it (the
executor puts it on a timer heap), so tests check waits without waiting.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from ray_ft._errors import invalid
from ray_ft.config import FTConfig
from ray_ft.failures import FailureType

__all__ = ["RetryDecision", "RetryPolicy", "backoff_delay", "jittered"]


@dataclasses.dataclass(frozen=True, slots=True)
class RetryDecision:
    """The policy's verdict on one failure; truthy when the task should be retried."""

    retry: bool
    delay: float = 0.0
    reason: str = ""

    def __bool__(self) -> bool:
        return self.retry


def backoff_delay(attempt: int, base: float, multiplier: float, cap: float) -> float:
    """Exponential delay before retry number ``attempt`` (1-based), capped at ``cap``."""
    if attempt < 1:
        msg = f"attempt={attempt!r} is not valid; attempts count from 1"
        raise ValueError(msg)
    exponent = attempt - 1
    # Guard against float overflow for large attempts: once past the cap, stay there.
    try:
        raw = base * multiplier**exponent
    except OverflowError:
        return cap
    return min(cap, raw)


def jittered(delay: float, mode: str, uniform: Callable[[float, float], float]) -> float:
    """Apply jitter: "full" is U[0, d], "equal" is d/2 + U[0, d/2], "none" is d."""
    if mode == "full":
        return uniform(0.0, delay)
    if mode == "equal":
        return delay / 2 + uniform(0.0, delay / 2)
    if mode == "none":
        return delay
    raise invalid("jitter", mode, "'full', 'equal' or 'none'")


class RetryPolicy:
    """Exponential backoff with jitter and per-failure-type retry rules."""

    def __init__(
        self,
        config: FTConfig | dict[str, object] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = FTConfig.coerce(config)
        self._rng = rng if rng is not None else random.Random()

    def should_retry(self, failure_type: FailureType, exc: BaseException | None = None) -> bool:
        """True when this kind of failure is retried at all (ignoring the attempt count)."""
        if failure_type is FailureType.APPLICATION_ERROR:
            if FailureType.APPLICATION_ERROR in self.config.retry_on:
                return True
            return exc is not None and isinstance(exc, self.config.retry_exceptions)
        return failure_type in self.config.retry_on

    def decide(
        self, attempt: int, failure_type: FailureType, exc: BaseException | None = None
    ) -> RetryDecision:
        """Decide after the ``attempt``-th failure (1-based) of one task."""
        cfg = self.config
        if not self.should_retry(failure_type, exc):
            return RetryDecision(False, 0.0, f"{failure_type.value} is not retried")
        if attempt >= cfg.max_retries:
            return RetryDecision(
                False, 0.0, f"gave up after {attempt} failures (max_retries={cfg.max_retries})"
            )
        base = backoff_delay(attempt, cfg.retry_delay, cfg.backoff_multiplier, cfg.max_retry_delay)
        delay = jittered(base, cfg.jitter, self._rng.uniform)
        return RetryDecision(
            True, delay, f"retry {attempt + 1} of {cfg.max_retries} after {failure_type.value}"
        )
