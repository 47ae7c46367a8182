"""What one GPU reading says (``GpuReading``), the backends' errors, and slowdown history.

Every backend hands the monitor one ``GpuReading`` per GPU; a key is missing when its
backend cannot read it (GPUtil reads load, memory and temperature only) and None when the
GPU or driver does not support it (named in ``unsupported``).
"""

from __future__ import annotations

import collections
from typing import Any, TypedDict

__all__ = ["GpuBackendUnavailable", "GpuReading", "NvmlInitFailed", "ThrottleHistory", "error_name"]


class GpuReading(TypedDict, total=False):
    """One GPU's reading (NVML's names in comments)."""

    id: int  #: the NVML index; -1 for a reading about the backend itself (hung, failed)
    name: str | None  #: the product name
    uuid: str | None  #: the GPU's UUID (GPU-...)
    pci_bus_id: str | None  #: the PCI bus id
    load: float | None  #: utilisation, 0..1 (never a fault)
    memory_used: float | None  #: MiB in use (never a fault)
    memory_total: float | None  #: MiB in all
    temperature: float | None  #: GPU core temperature, C
    temperature_limit: float | None  #: the slowdown threshold, C
    temperature_max: float | None  #: the GPU's own max operating limit, C (field 196)
    memory_temperature: float | None  #: HBM temperature, C (field 82)
    memory_temperature_max: float | None  #: HBM max operating limit, C (field 195)
    recovery_action: int | None  #: the driver's recovery action, 0 = none (field 230)
    ecc_double_bit: int | None  #: volatile uncorrected ECC errors
    retired_pages_pending: bool | None  #: a page retirement waits for a reset (pre-Ampere)
    remap_pending: bool | None  #: a row remap waits for a reset (A100/H100)
    remap_failure: bool | None  #: a row remap failed
    thermal_slowdown: bool | None  #: the clocks slowed for heat (HW thermal)
    power_brake: bool | None  #: the clocks slowed by the power brake
    slowdown_sustained: bool  #: set by the monitor: slowed on n of the last m samples
    lost: bool  #: NVML says the GPU is lost
    reset_required: bool  #: NVML says the GPU needs a reset
    hung: bool  #: the backend did not answer within its deadline
    error: str  #: the reading failed as a whole
    errors: dict[str, str]  #: reading label -> the NVML error that reading got
    unsupported: list[str]  #: readings this GPU or driver does not support


class GpuBackendUnavailable(RuntimeError):
    """The backend's library or driver is missing: the machine has no usable GPU backend."""


class NvmlInitFailed(GpuBackendUnavailable):
    """nvmlInit failed although the library is installed (driver not loaded, mismatch)."""


def error_name(exc: BaseException) -> str:
    """NVML's error class name, e.g. 'NVMLError_NotSupported'."""
    return type(exc).__name__


class ThrottleHistory:
    """Slowdown samples per GPU: degraded only when sustained over ``n`` of the last ``m``."""

    def __init__(self, n: int = 3, m: int = 5) -> None:
        if not 1 <= n <= m:
            msg = f"ThrottleHistory(n={n}, m={m}) is not valid; pass 1 <= n <= m"
            raise ValueError(msg)
        self.n, self.m = n, m
        self._samples: dict[str, collections.deque[bool]] = {}

    def add(self, gpu_key: str, slowed: bool) -> bool:
        """Record one sample; True when slowdown is sustained."""
        window = self._samples.setdefault(gpu_key, collections.deque(maxlen=self.m))
        window.append(slowed)
        return sum(window) >= self.n


def plain(value: Any) -> Any:
    """A JSON-friendly form of an NVML answer (ctypes structures become dicts)."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {name: plain(getattr(value, name)) for name, *_ in fields}
    if hasattr(value, "_fields"):  # namedtuple
        return {name: plain(getattr(value, name)) for name in value._fields}
    return repr(value)


def text(value: Any) -> Any:
    """NVML's bytes as str (newer bindings already answer str)."""
    return value.decode() if isinstance(value, bytes) else value
