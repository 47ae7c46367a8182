"""HealthProbe: a tiny actor pinned to one node that reports that node's health.

One lives on every alive node (NodeAffinity soft=False, num_cpus=0). A probe that does not
answer within probe_timeout is the signal for a frozen or hung node that Ray still calls
alive: its process is a child of the node's raylet and freezes with it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft.health.monitor import HealthMonitor, HealthThresholds

__all__ = ["HealthProbe", "start_probe"]


class HealthProbe:
    """Samples its node on request; never blocks for long (psutil primed, GPU lazily)."""

    def __init__(
        self, thresholds: dict[str, float | None] | None = None, expected_gpus: int = 0
    ) -> None:
        self.monitor = HealthMonitor(
            HealthThresholds(**(thresholds or {})),  # type: ignore[arg-type]
            expected_gpus=expected_gpus,
            watch_xids=expected_gpus > 0,
        )
        self.node_id = ray.get_runtime_context().get_node_id()
        self._raylet = os.getppid()  # workers are the raylet's children

    def ping(self) -> float:
        """The liveness heartbeat: answers at once (its round trip is the node's latency).

        Raises once this node's raylet is gone: a worker can outlive its raylet for a while
        (until Ray's own health check, ~15 s), and must not vouch for a dead node.
        """
        if os.getppid() != self._raylet:
            msg = f"the raylet of node {self.node_id} is gone (this probe was re-parented)"
            raise RuntimeError(msg)
        return time.time()

    def check(self) -> dict[str, Any]:
        """The node's health dict and verdict (severity ok, degraded or fatal)."""
        health = self.monitor.sample()
        report = self.monitor.check(health)
        return {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "time": time.time(),
            "healthy": report.healthy,
            "severity": report.severity.value,
            "reasons": list(report.reasons),
            "health": health,
        }

    def pid(self) -> int:
        """The probe's process id (tests freeze and kill it)."""
        return os.getpid()


_RemoteProbe: Any = ray.remote(HealthProbe)


# ray_ft's own actors start their own worker processes: a runtime env of their own keeps
# Ray from handing them the idle worker it started for the job's tasks (the driver's node
# has one ready per CPU: taking it would delay the job's first call by a process start)
OWN_WORKER: dict[str, Any] = {"env_vars": {"RAY_FT_OWN_WORKER": "1"}}


def start_probe(
    node_id: str, thresholds: dict[str, float | None] | None = None, expected_gpus: int = 0
) -> Any:
    """Start a HealthProbe pinned to ``node_id``; it does not restart (the manager replaces it).

    ``expected_gpus`` is Ray's GPU count for the node: fewer GPUs seen by NVML is fatal.
    """
    return _RemoteProbe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        num_cpus=0,
        max_restarts=0,
        max_concurrency=4,  # a slow health check never delays a ping
        name=None,
        runtime_env=OWN_WORKER,
    ).remote(thresholds, expected_gpus)
