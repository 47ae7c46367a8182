"""The NVML backend: every GPU read through a table of NVML calls, on a thread with a deadline.

Each reading is one row of ``_READS``: its label, the NVML calls that answer it (newest
first: a deprecated call gives way to its successor and back), and how the answer becomes
``GpuReading`` fields. A call this GPU or driver lacks is skipped; a lost GPU or one that
needs a reset ends the reading and says so; any other error is kept under ``errors``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import time
import types
from collections.abc import Callable
from typing import Any, cast

from ray_ft.health.gpu.reading import (
    GpuBackendUnavailable,
    GpuReading,
    NvmlInitFailed,
    error_name,
    plain,
    text,
)

__all__ = ["NvmlBackend", "is_error"]

_FIELD_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
_FIELD_MEMORY_TEMP = 82  # NVML_FI_DEV_MEMORY_TEMP
_FIELD_MEM_MAX_TLIMIT = 195  # NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT
_FIELD_GPU_MAX_TLIMIT = 196  # NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT
#: field id -> the reading's key (one nvmlDeviceGetFieldValues call reads them all)
_FIELDS = {
    _FIELD_RECOVERY_ACTION: "recovery_action",
    _FIELD_MEMORY_TEMP: "memory_temperature",
    _FIELD_MEM_MAX_TLIMIT: "memory_temperature_max",
    _FIELD_GPU_MAX_TLIMIT: "temperature_max",
}
_HW_THERMAL = 0x40  # nvmlClocksEventReasonHwThermalSlowdown
_HW_POWER_BRAKE = 0x80  # nvmlClocksEventReasonHwPowerBrakeSlowdown

# NVML return codes (nvml.h), for modules that carry only the code
NOT_SUPPORTED, FUNCTION_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED, TIMEOUT = 3, 13, 15, 16, 10


def is_error(exc: BaseException, code: int, name: str) -> bool:
    """``exc`` is NVML's error ``code`` (by its value, or by its class name)."""
    value = getattr(exc, "value", None)
    return (isinstance(value, int) and value == code) or type(exc).__name__ == f"NVMLError_{name}"


def _ends_reading(exc: BaseException) -> bool:
    return is_error(exc, GPU_IS_LOST, "GpuIsLost") or is_error(exc, RESET_REQUIRED, "ResetRequired")


def _missing(exc: BaseException) -> bool:
    return is_error(exc, NOT_SUPPORTED, "NotSupported") or is_error(
        exc, FUNCTION_NOT_FOUND, "FunctionNotFound"
    )


Call = Callable[[Any, Any], Any]  # (nvml module, device handle) -> NVML's answer


@dataclasses.dataclass(frozen=True, slots=True)
class _Read:
    """One reading: the NVML calls that answer it, in order, and its fields."""

    label: str  #: its name in ``unsupported`` and ``errors``
    calls: tuple[tuple[str, Call], ...]  #: (NVML function name, how to call it)
    keys: tuple[str, ...]  #: the reading's fields, None when no call answers
    into: Callable[[Any], tuple[Any, ...]]  #: the answer -> the fields' values


def _fields_of(values: Any) -> tuple[Any, ...]:
    found = {
        int(item.fieldId): _field_value(item)
        for item in values or ()
        if getattr(item, "nvmlReturn", 0) == 0
    }
    return tuple(found.get(field) for field in _FIELDS)


def _on_handle(call: str) -> tuple[str, Call]:
    """An NVML call that takes the device handle alone."""
    return call, lambda nvml, handle: getattr(nvml, call)(handle)


def _with(call: str, *constants: tuple[str, int]) -> tuple[str, Call]:
    """An NVML call that takes the handle and NVML constants (by name, with nvml.h's
    value where the module lacks them)."""
    return call, lambda nvml, handle: getattr(nvml, call)(
        handle, *(getattr(nvml, name, value) for name, value in constants)
    )


def _same(value: Any) -> tuple[Any]:
    return (value,)


_GPU_SENSOR = ("NVML_TEMPERATURE_GPU", 0)

#: every reading of one GPU, in the order they are read
_READS: tuple[_Read, ...] = (
    _Read("name", (_on_handle("nvmlDeviceGetName"),), ("name",), lambda v: (text(v),)),
    _Read("uuid", (_on_handle("nvmlDeviceGetUUID"),), ("uuid",), lambda v: (text(v),)),
    _Read(
        "pci",
        (_on_handle("nvmlDeviceGetPciInfo"),),
        ("pci_bus_id",),
        lambda v: (text(getattr(v, "busId", None)),),
    ),
    _Read(
        "utilization",
        (_on_handle("nvmlDeviceGetUtilizationRates"),),
        ("load",),
        lambda v: (v.gpu / 100.0,),
    ),
    _Read(
        "memory",
        (_on_handle("nvmlDeviceGetMemoryInfo"),),
        ("memory_used", "memory_total"),
        lambda v: (v.used / 2**20, v.total / 2**20),
    ),
    _Read(
        "temperature",
        (
            _with("nvmlDeviceGetTemperatureV", _GPU_SENSOR),
            _with("nvmlDeviceGetTemperature", _GPU_SENSOR),
        ),
        ("temperature",),
        _same,
    ),
    _Read(
        "temperature_limit",
        (_with("nvmlDeviceGetTemperatureThreshold", ("NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1)),),
        ("temperature_limit",),
        _same,
    ),
    _Read(
        "field_values",
        (("nvmlDeviceGetFieldValues", lambda n, h: n.nvmlDeviceGetFieldValues(h, list(_FIELDS))),),
        tuple(_FIELDS.values()),
        _fields_of,
    ),
    _Read(
        "ecc_double_bit",
        (
            _with(
                "nvmlDeviceGetTotalEccErrors",
                ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                ("NVML_VOLATILE_ECC", 0),
            ),
        ),
        ("ecc_double_bit",),
        _same,
    ),
    _Read(
        "retired_pages_pending",
        (_on_handle("nvmlDeviceGetRetiredPagesPendingStatus"),),
        ("retired_pages_pending",),
        lambda v: (bool(v),),
    ),
    _Read(
        "remapped_rows",
        (_on_handle("nvmlDeviceGetRemappedRows"),),
        ("remap_pending", "remap_failure"),
        lambda v: (bool(v[2]), bool(v[3])),
    ),
    _Read(
        "clocks_event_reasons",
        (
            _on_handle("nvmlDeviceGetCurrentClocksEventReasons"),
            _on_handle("nvmlDeviceGetCurrentClocksThrottleReasons"),
        ),
        ("thermal_slowdown", "power_brake"),
        lambda v: (bool(v & _HW_THERMAL), bool(v & _HW_POWER_BRAKE)),
    ),
)


class NvmlBackend:
    """Reads every GPU through NVML; ``nvml_module`` may be any module with pynvml's API."""

    name = "nvml"

    def __init__(
        self,
        nvml_module: types.ModuleType | None = None,
        *,
        call_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        nvml: Any = nvml_module
        if nvml is None:
            try:
                import pynvml

                nvml = pynvml
            except ImportError as exc:
                msg = "nvidia-ml-py (pynvml) is not installed"
                raise GpuBackendUnavailable(msg) from exc
        self._nvml = nvml
        self.call_timeout = call_timeout
        self._clock = clock
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray_ft-nvml")
        self._stuck: cf.Future[Any] | None = None
        self._stuck_since = 0.0
        try:
            self._deadline(nvml.nvmlInit)
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, a hang...
            msg = f"NVML did not start: {error_name(exc)}: {exc}"
            raise NvmlInitFailed(msg) from exc

    # -- deadlines -----------------------------------------------------------------------

    def _deadline(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the NVML thread; TimeoutError when it does not answer in time.

        A call that hangs keeps the thread; later calls fail at once until it returns.
        """
        if self._stuck is not None:
            if not self._stuck.done():
                waited = self._clock() - self._stuck_since
                msg = f"an NVML call has not returned for {waited:.1f}s"
                raise TimeoutError(msg)
            self._stuck = None
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=self.call_timeout)
        except cf.TimeoutError:
            self._stuck, self._stuck_since = future, self._clock()
            msg = f"NVML did not answer within {self.call_timeout:g}s"
            raise TimeoutError(msg) from None

    # -- reading -------------------------------------------------------------------------

    def read(self) -> list[GpuReading]:
        """One reading per GPU; a hung driver gives one reading that says so."""
        try:
            readings: list[GpuReading] = self._deadline(self._read_all)
            return readings
        except TimeoutError as exc:
            return [{"id": -1, "hung": True, "error": f"NVML hung: {exc}"}]

    def raw(self) -> list[dict[str, Any]]:
        """Every NVML call of a reading with its value, latency and exception class."""
        calls: list[dict[str, Any]] = []
        try:
            self._deadline(lambda: self._read_all(calls))
        except TimeoutError as exc:
            calls.append({"call": "(deadline)", "error": "TimeoutError", "detail": str(exc)})
        return calls

    def _read_all(self, trace: list[dict[str, Any]] | None = None) -> list[GpuReading]:
        nvml = self._nvml
        count = self._traced(trace, -1, "nvmlDeviceGetCount", nvml.nvmlDeviceGetCount)
        return [self._read_one(index, trace) for index in range(count)]

    def _traced(
        self, trace: list[dict[str, Any]] | None, index: int, call: str, fn: Callable[[], Any]
    ) -> Any:
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:
            if trace is not None:
                trace.append(
                    {
                        "gpu": index,
                        "call": call,
                        "error": error_name(exc),
                        "detail": str(exc),
                        "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                    }
                )
            raise
        if trace is not None:
            trace.append(
                {
                    "gpu": index,
                    "call": call,
                    "value": plain(value),
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                }
            )
        return value

    def _read_one(self, index: int, trace: list[dict[str, Any]] | None) -> GpuReading:
        nvml = self._nvml
        errors: dict[str, str] = {}
        unsupported: list[str] = []
        gpu: dict[str, Any] = {"id": index, "lost": False, "unsupported": unsupported}
        gpu["errors"] = errors
        try:
            handle = self._traced(
                trace,
                index,
                "nvmlDeviceGetHandleByIndex",
                lambda: nvml.nvmlDeviceGetHandleByIndex(index),
            )
            for read in _READS:
                answer = self._first(read, handle, index, trace, errors, unsupported)
                values = (None,) * len(read.keys) if answer is None else read.into(answer)
                gpu.update(zip(read.keys, values))
        except Exception as exc:
            if is_error(exc, GPU_IS_LOST, "GpuIsLost"):
                gpu["lost"] = True
            elif is_error(exc, RESET_REQUIRED, "ResetRequired"):
                gpu["reset_required"] = True
            else:
                gpu["error"] = f"{error_name(exc)}: {exc}"
        return cast(GpuReading, gpu)

    def _first(
        self,
        read: _Read,
        handle: Any,
        index: int,
        trace: list[dict[str, Any]] | None,
        errors: dict[str, str],
        unsupported: list[str],
    ) -> Any:
        """The answer of the first call that answers; None when all are unsupported or
        missing (``unsupported``) or one fails (``errors``). A lost GPU raises."""
        nvml = self._nvml
        for call, fn in read.calls:
            if not hasattr(nvml, call):
                continue
            try:
                return self._traced(trace, index, call, functools.partial(fn, nvml, handle))
            except Exception as exc:
                if _ends_reading(exc):
                    raise
                if _missing(exc):
                    continue  # try the older or newer call
                errors[read.label] = f"{error_name(exc)}: {exc}"
                return None
        unsupported.append(read.label)
        return None

    def device_handles(self) -> list[Any]:
        """Handles of every GPU (the Xid watcher registers them)."""
        nvml = self._nvml
        return self._deadline(
            lambda: [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        )

    @property
    def nvml(self) -> Any:
        """The NVML module in use."""
        return self._nvml


def _field_value(item: Any) -> Any:
    value = item.value
    kind = int(getattr(item, "valueType", 1))
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return getattr(value, attr.get(kind, "uiVal"), value)
