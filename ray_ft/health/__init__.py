"""This machine's health: sampling (psutil, disk), verdicts (ok, degraded, fatal), and the GPU
(NVML on a helper thread, GPUtil as a fallback, Xid events).

Imports no other layer of ray_ft (only ``ray_ft.config``); the probe actor runs it on each node.
"""

from ray_ft.health.monitor import (
    Finding,
    HealthMonitor,
    HealthReport,
    HealthThresholds,
    Severity,
)

__all__ = ["Finding", "HealthMonitor", "HealthReport", "HealthThresholds", "Severity"]
