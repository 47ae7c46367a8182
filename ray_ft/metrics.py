"""Prometheus metrics through ray.util.metrics (exported by Ray's metrics agent).

Created lazily, once per process, and only touched on failures and state changes so the
fast path pays nothing. If metrics cannot be created (no agent), every call is a no-op.
"""

from __future__ import annotations

import logging
import threading

from ray_ft.core.scheduler import NullMetrics  # the one no-op stand-in (the core's)

__all__ = ["BREAKER_STATE_VALUES", "Metrics", "get_metrics"]

log = logging.getLogger(__name__)

BREAKER_STATE_VALUES = {"CLOSED": 0.0, "HALF_OPEN": 1.0, "OPEN": 2.0}


class Metrics:
    """Counters, gauges and a histogram for failures, retries, breakers and recovery."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.failures = Counter(
            "ray_ft_failures_total", "Attempt failures by type", tag_keys=("failure_type",)
        )
        self.retries = Counter("ray_ft_retries_total", "Attempts scheduled for retry")
        self.given_up = Counter(
            "ray_ft_tasks_given_up_total",
            "Tasks that exhausted retries",
            tag_keys=("failure_type",),
        )
        self.succeeded = Counter("ray_ft_tasks_succeeded_total", "Tasks that succeeded")
        self.breaker_state = Gauge(
            "ray_ft_breaker_state",
            "Breaker per node: 0 closed, 1 half-open, 2 open",
            tag_keys=("node_id",),
        )
        self.node_healthy = Gauge(
            "ray_ft_node_healthy", "1 when the node's last probe was healthy", tag_keys=("node_id",)
        )
        self.recovery_seconds = Histogram(
            "ray_ft_recovery_seconds",
            "From a task's first failure to its success",
            boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 300],
        )

    def failure(self, failure_type: str) -> None:
        """Count one attempt failure."""
        self.failures.inc(1, {"failure_type": failure_type})

    def retry(self) -> None:
        """Count one scheduled retry."""
        self.retries.inc(1)

    def gave_up(self, failure_type: str) -> None:
        """Count one task that exhausted its retries."""
        self.given_up.inc(1, {"failure_type": failure_type})

    def success(self, count: int) -> None:
        """Count successes in a batch."""
        if count:
            self.succeeded.inc(count)

    def recovered(self, seconds: float) -> None:
        """Observe a task's time from first failure to success."""
        self.recovery_seconds.observe(seconds)

    def node(self, node_id: str, breaker: str, healthy: bool | None) -> None:
        """Set a node's breaker and health gauges."""
        self.breaker_state.set(BREAKER_STATE_VALUES.get(breaker, 0.0), {"node_id": node_id})
        if healthy is not None:
            self.node_healthy.set(1.0 if healthy else 0.0, {"node_id": node_id})


_lock = threading.Lock()
_instance: Metrics | NullMetrics | None = None


def get_metrics() -> Metrics | NullMetrics:
    """This process's metrics (created on first use; a no-op object if that fails)."""
    global _instance
    with _lock:
        if _instance is None:
            try:
                _instance = Metrics()
            except Exception as exc:
                log.debug("ray metrics unavailable: %s", exc)
                _instance = NullMetrics()
        return _instance
