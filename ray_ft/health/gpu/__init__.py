"""GPU health as DCGM and the Kubernetes device plugin judge it, through NVML.

Fatal (the node's GPU work must move): volatile double-bit ECC errors, pending page
retirement (pre-Ampere), row-remap failure or remap pending (A100/H100: reset needed), a GPU
recovery action other than none, a lost GPU, reset required, a critical Xid event, fewer
GPUs than Ray counts, NVML failing to start on a node Ray says has GPUs, NVML hung.
Degraded (no new work until it clears): thermal or power-brake slowdown sustained over
``N`` of the last ``M`` samples, GPU or HBM temperature at the GPU's own limit.
Never a fault: utilisation, memory in use.

Every NVML read runs on a helper thread with a deadline, so a wedged driver gives a fatal
"NVML hung" verdict at once instead of a probe that stops answering. Deprecated calls give
way to their successors (clocks-event reasons, ``nvmlDeviceGetTemperatureV``, field values)
and fall back. GPUs are named by NVML index, UUID and PCI bus id.

Here: ``reading`` (what a reading says), ``nvml`` (the table of NVML calls), ``gputil``
(the fallback), ``xid`` (Xid events). Imports nothing of ray_ft but itself.
"""

from ray_ft.health.gpu.gputil import GPUtilBackend
from ray_ft.health.gpu.nvml import NvmlBackend
from ray_ft.health.gpu.reading import (
    GpuBackendUnavailable,
    GpuReading,
    NvmlInitFailed,
    ThrottleHistory,
    error_name,
)
from ray_ft.health.gpu.xid import APPLICATION_XIDS, CRITICAL_XIDS, XidWatcher

__all__ = [
    "APPLICATION_XIDS",
    "CRITICAL_XIDS",
    "GPUtilBackend",
    "GpuBackendUnavailable",
    "GpuReading",
    "NvmlBackend",
    "NvmlInitFailed",
    "ThrottleHistory",
    "XidWatcher",
    "error_name",
]
