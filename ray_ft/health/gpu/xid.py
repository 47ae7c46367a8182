"""Xid events: NVML's word on GPU faults, latched between health checks by one thread."""

from __future__ import annotations

import threading
import time
from typing import Any

from ray_ft.health.gpu.nvml import TIMEOUT, NvmlBackend, is_error
from ray_ft.health.gpu.reading import error_name, text

__all__ = ["APPLICATION_XIDS", "CRITICAL_XIDS", "XidWatcher"]

#: Xids operators drain nodes for (hardware, driver or fabric faults).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})
#: Xids raised by an application's own bugs (illegal address, bad kernels): never a fault.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
_XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError


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
                self._uuids[_handle_key(handle)] = text(nvml.nvmlDeviceGetUUID(handle))
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
                if is_error(exc, TIMEOUT, "Timeout"):
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
