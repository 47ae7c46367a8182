"""A stand-in for pynvml that raises what real NVML raises (codes and classes alike).

Each device is a dict of readings; a reading set to an exception class or instance is
raised instead; "lost" makes every call on the device raise GpuIsLost. ``hang`` makes
reads block until released (a wedged driver).
"""

from __future__ import annotations

import threading
import types
from collections import namedtuple

NOT_SUPPORTED, TIMEOUT, FUNCTION_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED = 3, 10, 13, 15, 16
DRIVER_NOT_LOADED, UNKNOWN = 9, 999


class NVMLError(Exception):
    def __init__(self, value: int = UNKNOWN) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def _error_class(name: str, code: int) -> type[NVMLError]:
    def init(self, value: int = code) -> None:
        NVMLError.__init__(self, code)

    return type(f"NVMLError_{name}", (NVMLError,), {"__init__": init})


NotSupported = _error_class("NotSupported", NOT_SUPPORTED)
FunctionNotFound = _error_class("FunctionNotFound", FUNCTION_NOT_FOUND)
GpuIsLost = _error_class("GpuIsLost", GPU_IS_LOST)
ResetRequired = _error_class("ResetRequired", RESET_REQUIRED)
Timeout = _error_class("Timeout", TIMEOUT)
DriverNotLoaded = _error_class("DriverNotLoaded", DRIVER_NOT_LOADED)
Unknown = _error_class("Unknown", UNKNOWN)

Util = namedtuple("Util", "gpu memory")
Mem = namedtuple("Mem", "total free used")
Pci = namedtuple("Pci", "busId")
Field = namedtuple("Field", "fieldId valueType nvmlReturn value")
FieldUnion = namedtuple("FieldUnion", "uiVal dVal")
Event = namedtuple("Event", "device eventType eventData")

GOOD = {
    "name": b"NVIDIA H100 80GB HBM3",
    "util": 100,
    "total": 80 * 2**30,
    "used": int(78.4 * 2**30),  # 98 % in use: TF and JAX preallocate
    "temp": 70,
    "slowdown": 87,
    "ecc": 0,
    "pending": NotSupported,  # Ampere and Hopper have no page retirement
    "rows": (0, 0, 0, 0),
    "reasons": 0,
    "fields": {230: 0, 82: 60, 195: 95, 196: 90},
}


def make(devices, *, init_error=None, deprecated_only=False, hang=None, xids=()):
    """A module with pynvml's API over ``devices`` (dicts, or "lost")."""
    m = types.ModuleType("nvml_standin")
    m.NVMLError = NVMLError
    for cls in (NotSupported, FunctionNotFound, GpuIsLost, ResetRequired, Timeout, Unknown):
        setattr(m, cls.__name__, cls)
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    m.NVML_VOLATILE_ECC = 0
    m.calls = []
    events = list(xids)

    def call(name, h, key, wrap=lambda v: v):
        m.calls.append(name)
        if hang is not None and not hang.is_set():
            hang.wait()
        d = devices[h]
        if d == "lost":
            raise GpuIsLost()
        value = d.get(key, NotSupported)
        if isinstance(value, type) and issubclass(value, Exception):
            raise value()
        if isinstance(value, Exception):
            raise value
        return wrap(value)

    def init():
        if init_error is not None:
            raise init_error

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: call("name", h, "name")
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    m.nvmlDeviceGetPciInfo = lambda h: Pci(f"00000000:{h + 1:02X}:00.0".encode())
    m.nvmlDeviceGetUtilizationRates = lambda h: call("util", h, "util", lambda v: Util(v, 0))
    m.nvmlDeviceGetMemoryInfo = lambda h: Mem(devices[h]["total"], 0, call("mem", h, "used"))
    m.nvmlDeviceGetTemperature = lambda h, s: call("temp", h, "temp")
    m.nvmlDeviceGetTemperatureThreshold = lambda h, t: call("slowdown", h, "slowdown")
    m.nvmlDeviceGetTotalEccErrors = lambda h, t, c: call("ecc", h, "ecc")
    m.nvmlDeviceGetRetiredPagesPendingStatus = lambda h: call("pending", h, "pending")
    m.nvmlDeviceGetRemappedRows = lambda h: call("rows", h, "rows")
    m.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: call("reasons", h, "reasons")

    def fields(h, ids):
        values = call("fields", h, "fields")
        return [
            Field(i, 1, 0 if i in values else NOT_SUPPORTED, FieldUnion(values.get(i, 0), 0.0))
            for i in ids
        ]

    m.nvmlDeviceGetFieldValues = fields
    if not deprecated_only:
        m.nvmlDeviceGetTemperatureV = lambda h, s: call("tempV", h, "temp")
        m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: call("reasonsV", h, "reasons")

    # Xid events: each wait returns the next queued event, then times out
    m.nvmlEventSetCreate = lambda: object()
    m.nvmlDeviceRegisterEvents = lambda h, kinds, s: None

    def wait(event_set, timeout_ms):
        if events:
            xid, h = events.pop(0)
            return Event(h, 0x8, xid)
        threading.Event().wait(timeout_ms / 1000)
        raise Timeout()

    m.nvmlEventSetWait = wait
    m.queue_xid = lambda xid, h=0: events.append((xid, h))
    return m
