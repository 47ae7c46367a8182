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
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

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

log = logging.getLogger(__name__)

#: Xids operators drain nodes for (hardware, driver or fabric faults).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})
#: Xids raised by an application's own bugs (illegal address, bad kernels): never a fault.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

_FIELD_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
_FIELD_MEMORY_TEMP = 82  # NVML_FI_DEV_MEMORY_TEMP
_FIELD_MEM_MAX_TLIMIT = 195  # NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT
_FIELD_GPU_MAX_TLIMIT = 196  # NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT
_HW_THERMAL = 0x40  # nvmlClocksEventReasonHwThermalSlowdown
_HW_POWER_BRAKE = 0x80  # nvmlClocksEventReasonHwPowerBrakeSlowdown
_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError

# NVML return codes (nvml.h), for modules that carry only the code
_NOT_SUPPORTED, _FUNCTION_NOT_FOUND, _GPU_IS_LOST, _RESET_REQUIRED, _TIMEOUT = 3, 13, 15, 16, 10

GpuReading = dict[str, Any]


class GpuBackendUnavailable(RuntimeError):
    """The backend's library or driver is missing: the machine has no usable GPU backend."""


class NvmlInitFailed(GpuBackendUnavailable):
    """nvmlInit failed although the library is installed (driver not loaded, mismatch)."""


def error_name(exc: BaseException) -> str:
    """NVML's error class name, e.g. 'NVMLError_NotSupported'."""
    return type(exc).__name__


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _is(exc: BaseException, code: int, name: str) -> bool:
    return _code(exc) == code or type(exc).__name__ == f"NVMLError_{name}"


class _Unsupported(Exception):
    """Every variant of a reading is missing on this GPU or driver."""


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
                    "value": _plain(value),
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                }
            )
        return value

    def _read_one(self, index: int, trace: list[dict[str, Any]] | None) -> GpuReading:
        nvml = self._nvml
        gpu: GpuReading = {"id": index, "lost": False, "unsupported": [], "errors": {}}

        def first(label: str, *variants: tuple[str, Callable[[], Any]]) -> Any:
            """The first variant that answers; None when all are unsupported or missing."""
            for call, fn in variants:
                if not hasattr(nvml, call.split("(")[0]):
                    continue
                try:
                    return self._traced(trace, index, call, fn)
                except Exception as exc:
                    if _is(exc, _GPU_IS_LOST, "GpuIsLost") or _is(
                        exc, _RESET_REQUIRED, "ResetRequired"
                    ):
                        raise
                    if _is(exc, _NOT_SUPPORTED, "NotSupported") or _is(
                        exc, _FUNCTION_NOT_FOUND, "FunctionNotFound"
                    ):
                        continue  # try the older or newer call
                    gpu["errors"][label] = f"{error_name(exc)}: {exc}"
                    return None
            gpu["unsupported"].append(label)
            return None

        try:
            handle = self._traced(
                trace,
                index,
                "nvmlDeviceGetHandleByIndex",
                lambda: nvml.nvmlDeviceGetHandleByIndex(index),
            )
            gpu["name"] = _text(
                first("name", ("nvmlDeviceGetName", lambda: nvml.nvmlDeviceGetName(handle)))
            )
            gpu["uuid"] = _text(
                first("uuid", ("nvmlDeviceGetUUID", lambda: nvml.nvmlDeviceGetUUID(handle)))
            )
            pci = first("pci", ("nvmlDeviceGetPciInfo", lambda: nvml.nvmlDeviceGetPciInfo(handle)))
            gpu["pci_bus_id"] = _text(getattr(pci, "busId", None)) if pci is not None else None
            util = first(
                "utilization",
                (
                    "nvmlDeviceGetUtilizationRates",
                    lambda: nvml.nvmlDeviceGetUtilizationRates(handle),
                ),
            )
            gpu["load"] = None if util is None else util.gpu / 100.0
            mem = first(
                "memory", ("nvmlDeviceGetMemoryInfo", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
            )
            gpu["memory_used"] = None if mem is None else mem.used / 2**20
            gpu["memory_total"] = None if mem is None else mem.total / 2**20
            sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            gpu["temperature"] = first(
                "temperature",
                (
                    "nvmlDeviceGetTemperatureV",
                    lambda: nvml.nvmlDeviceGetTemperatureV(handle, sensor),
                ),
                ("nvmlDeviceGetTemperature", lambda: nvml.nvmlDeviceGetTemperature(handle, sensor)),
            )
            gpu["temperature_limit"] = first(
                "temperature_limit",
                (
                    "nvmlDeviceGetTemperatureThreshold",
                    lambda: nvml.nvmlDeviceGetTemperatureThreshold(
                        handle, getattr(nvml, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1)
                    ),
                ),
            )
            fields = self._fields(
                first,
                handle,
                [
                    _FIELD_RECOVERY_ACTION,
                    _FIELD_MEMORY_TEMP,
                    _FIELD_MEM_MAX_TLIMIT,
                    _FIELD_GPU_MAX_TLIMIT,
                ],
            )
            gpu["recovery_action"] = fields.get(_FIELD_RECOVERY_ACTION)
            gpu["memory_temperature"] = fields.get(_FIELD_MEMORY_TEMP)
            gpu["memory_temperature_max"] = fields.get(_FIELD_MEM_MAX_TLIMIT)
            gpu["temperature_max"] = fields.get(_FIELD_GPU_MAX_TLIMIT)
            gpu["ecc_double_bit"] = first(
                "ecc_double_bit",
                (
                    "nvmlDeviceGetTotalEccErrors",
                    lambda: nvml.nvmlDeviceGetTotalEccErrors(
                        handle,
                        getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                        getattr(nvml, "NVML_VOLATILE_ECC", 0),
                    ),
                ),
            )
            pending = first(
                "retired_pages_pending",
                (
                    "nvmlDeviceGetRetiredPagesPendingStatus",
                    lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle),
                ),
            )
            gpu["retired_pages_pending"] = None if pending is None else bool(pending)
            rows = first(
                "remapped_rows",
                ("nvmlDeviceGetRemappedRows", lambda: nvml.nvmlDeviceGetRemappedRows(handle)),
            )
            gpu["remap_pending"] = None if rows is None else bool(rows[2])
            gpu["remap_failure"] = None if rows is None else bool(rows[3])
            reasons = first(
                "clocks_event_reasons",
                (
                    "nvmlDeviceGetCurrentClocksEventReasons",
                    lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(handle),
                ),
                (
                    "nvmlDeviceGetCurrentClocksThrottleReasons",
                    lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle),
                ),
            )
            gpu["thermal_slowdown"] = None if reasons is None else bool(reasons & _HW_THERMAL)
            gpu["power_brake"] = None if reasons is None else bool(reasons & _HW_POWER_BRAKE)
        except Exception as exc:
            if _is(exc, _GPU_IS_LOST, "GpuIsLost"):
                gpu["lost"] = True
            elif _is(exc, _RESET_REQUIRED, "ResetRequired"):
                gpu["reset_required"] = True
            else:
                gpu["error"] = f"{error_name(exc)}: {exc}"
        return gpu

    def _fields(self, first: Callable[..., Any], handle: Any, ids: list[int]) -> dict[int, Any]:
        nvml = self._nvml
        values = first(
            "field_values",
            ("nvmlDeviceGetFieldValues", lambda: nvml.nvmlDeviceGetFieldValues(handle, ids)),
        )
        result: dict[int, Any] = {}
        for item in values or ():
            if getattr(item, "nvmlReturn", 0) != 0:
                continue
            result[int(item.fieldId)] = _field_value(item)
        return result

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


class GPUtilBackend:
    """The fallback through GPUtil (nvidia-smi): load, memory and temperature only.

    Optional (``pip install ray-ft[gputil]``); bounded by a deadline, and failing closed: a
    failed or hung nvidia-smi is a reading that says so, never "no GPU".
    """

    name = "gputil"

    def __init__(self, *, call_timeout: float = 10.0) -> None:
        try:
            import GPUtil
        except Exception as exc:  # ImportError, or distutils missing on Python 3.12
            msg = f"GPUtil is not usable here: {exc}"
            raise GpuBackendUnavailable(msg) from exc
        self._gputil = GPUtil
        self.call_timeout = call_timeout
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray_ft-gputil")

    def read(self) -> list[GpuReading]:
        """One reading per GPU nvidia-smi lists; one error reading when it fails or hangs."""
        future = self._pool.submit(self._gputil.getGPUs)
        try:
            gpus = future.result(timeout=self.call_timeout)
        except cf.TimeoutError:
            return [
                {"id": -1, "hung": True, "error": f"nvidia-smi hung (> {self.call_timeout:g}s)"}
            ]
        except Exception as exc:
            return [{"id": -1, "error": f"nvidia-smi failed: {error_name(exc)}: {exc}"}]
        return [
            {
                "id": g.id,
                "uuid": getattr(g, "uuid", None),
                "load": g.load,
                "memory_used": g.memoryUsed,
                "memory_total": g.memoryTotal,
                "temperature": g.temperature,
                "name": getattr(g, "name", None),
            }
            for g in gpus
        ]


def _field_value(item: Any) -> Any:
    value = item.value
    kind = int(getattr(item, "valueType", 1))
    attr = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return getattr(value, attr.get(kind, "uiVal"), value)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _plain(value: Any) -> Any:
    """A JSON-friendly form of an NVML answer (ctypes structures become dicts)."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {name: _plain(getattr(value, name)) for name, *_ in fields}
    if hasattr(value, "_fields"):  # namedtuple
        return {name: _plain(getattr(value, name)) for name in value._fields}
    return repr(value)


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


class XidWatcher:
    """A thread that waits on NVML Xid events and latches them between health checks.

    Critical Xids stay latched for the life of the probe (the GPU needs a reset);
    application Xids are kept for the record and never judged.
    """

    def __init__(self, backend: NvmlBackend, *, wait_ms: int = 1000) -> None:
        self._nvml = backend.nvml
        self._wait_ms = wait_ms
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.critical: list[dict[str, Any]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        nvml = self._nvml
        self._set = nvml.nvmlEventSetCreate()
        self._uuids: dict[Any, str] = {}
        for handle in backend.device_handles():
            try:
                nvml.nvmlDeviceRegisterEvents(handle, _XID_EVENT, self._set)
                self._uuids[_handle_key(handle)] = _text(nvml.nvmlDeviceGetUUID(handle))
            except Exception as exc:  # NotSupported on some consumer cards
                self.error = f"{error_name(exc)}: {exc}"
        self._thread = threading.Thread(target=self._run, name="ray_ft-xid", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait(self._set, self._wait_ms)
            except Exception as exc:
                if _is(exc, _TIMEOUT, "Timeout"):
                    continue
                self.error = f"{error_name(exc)}: {exc}"
                self._stop.wait(self._wait_ms / 1000)
                continue
            xid = int(getattr(data, "eventData", 0))
            event = {
                "xid": xid,
                "gpu_uuid": self._uuids.get(_handle_key(getattr(data, "device", None))),
                "time": time.time(),
                "critical": xid in CRITICAL_XIDS,
            }
            with self._lock:
                self.events.append(event)
                del self.events[:-100]
                if event["critical"]:
                    self.critical.append(event)

    def latched(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(critical Xids so far, all Xids since the last call)."""
        with self._lock:
            recent, self.events = self.events, []
            return list(self.critical), recent

    def stop(self) -> None:
        """End the thread (it wakes within ``wait_ms``)."""
        self._stop.set()


def _handle_key(handle: Any) -> Any:
    """A hashable identity for an NVML device handle (a ctypes pointer, or a stand-in's)."""
    import ctypes

    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle
