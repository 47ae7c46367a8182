"""HealthMonitor: this machine's CPU, memory, disk and GPU state, and a verdict on it.

Sampling never blocks (psutil's CPU counter is primed once and read without an interval).
GPU data comes from NVML (nvidia-ml-py) and, failing that, GPUtil; both are imported
lazily, and a machine without a GPU is simply healthy. NVML also reveals what GPUtil cannot:
double-bit ECC errors, pending page retirement, a lost GPU, hardware thermal slowdown.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import psutil

from ray_ft.config import FTConfig
from ray_ft.failures import Severity
from ray_ft.health.gpu import (
    GpuBackendUnavailable,
    GPUtilBackend,
    NvmlBackend,
    NvmlInitFailed,
    ThrottleHistory,
    XidWatcher,
)

__all__ = [
    "Finding",
    "GPUtilBackend",
    "GpuBackend",
    "HealthMonitor",
    "HealthReport",
    "HealthThresholds",
    "NvmlBackend",
    "Severity",
    "detect_gpu_backend",
    "gpu_findings",
    "gpu_label",
    "gpu_node_findings",
    "sample_system",
]

log = logging.getLogger(__name__)

_DISK_FULL_GB = 0.1  # less free space than this is a full disk: fatal
_CPU_MIN_INTERVAL_S = 0.1  # the shortest interval a CPU figure is measured over
_NVML_RETRY_S = 60.0  # a failed nvmlInit is tried again this often (a driver may load later)


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with a node, and how bad it is."""

    severity: Severity
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    """A verdict with its reasons; truthy when healthy (severity ``ok``).

    ``fatal`` (a lost GPU, double-bit ECC, a full disk, a node that stopped answering)
    excludes the node and reruns its attempts elsewhere; ``degraded`` (memory pressure,
    thermal slowdown) only keeps new work away until it clears.
    """

    healthy: bool
    reasons: tuple[str, ...] = ()
    severity: Severity = Severity.OK

    def __bool__(self) -> bool:
        return self.healthy

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> HealthReport:
        """The report of some findings: its severity is the worst of theirs."""
        items = list(findings)
        worst = max((f.severity for f in items), key=lambda s: s.rank, default=Severity.OK)
        return cls(worst is Severity.OK, tuple(f.reason for f in items), worst)

    @property
    def fatal(self) -> bool:
        """True when the node must be excluded and its work rerun elsewhere."""
        return self.severity is Severity.FATAL


@dataclasses.dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits above which a node is degraded (percent, or degrees C for temperature).

    ``cpu`` and ``gpu_memory`` are off (None) by default: a node busy with evaluations is
    doing its job, and TF/JAX preallocate GPU memory. Set them to opt in.
    """

    cpu: float | None = None
    memory: float = 95.0
    disk: float = 95.0
    gpu_temp: float = 85.0
    gpu_memory: float | None = None
    disk_full_gb: float = _DISK_FULL_GB

    @classmethod
    def from_config(cls, config: FTConfig | Mapping[str, Any] | None) -> HealthThresholds:
        """Take the ``*_threshold`` settings of an FTConfig (or a dict of them)."""
        cfg = FTConfig.coerce(config)
        return cls(
            cpu=cfg.cpu_threshold,
            memory=cfg.memory_threshold,
            disk=cfg.disk_threshold,
            gpu_temp=cfg.gpu_temp_threshold,
            gpu_memory=cfg.gpu_memory_threshold,
        )


class GpuBackend(Protocol):
    """Reads every GPU of this machine as a list of dicts (the seed's keys and more)."""

    name: str

    def read(self) -> Sequence[Mapping[str, Any]]:
        """One reading per GPU (``ray_ft.health.gpu.GpuReading``'s keys)."""
        ...


def detect_gpu_backend() -> GpuBackend | None:
    """NVML when it starts, else GPUtil when it imports, else None (no GPU backend)."""
    return _detect()[0]


def _detect() -> tuple[GpuBackend | None, str | None]:
    """The backend, and why NVML did not start when its library is there but failed."""
    nvml_error = None
    try:
        return NvmlBackend(), None
    except NvmlInitFailed as exc:
        nvml_error = str(exc)
    except GpuBackendUnavailable as exc:
        log.debug("NVML unavailable: %s", exc)
    try:
        return GPUtilBackend(), nvml_error
    except GpuBackendUnavailable as exc:
        log.debug("GPUtil unavailable: %s", exc)
    return None, nvml_error


_AUTO = "auto"


class _CpuMeter:
    """CPU use since the previous reading, from psutil's counters; never 0.0 from an
    empty interval (the first reading waits until ``_CPU_MIN_INTERVAL_S`` has passed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = (time.monotonic(), psutil.cpu_times())
        self._last: float | None = None

    def percent(self) -> float:
        with self._lock:
            elapsed = time.monotonic() - self._base[0]
            if elapsed < _CPU_MIN_INTERVAL_S:
                if self._last is not None:
                    return self._last
                time.sleep(_CPU_MIN_INTERVAL_S - elapsed)
            now, times = time.monotonic(), psutil.cpu_times()
            value = _busy_percent(self._base[1], times)
            self._base, self._last = (now, times), value
            return value


def _busy_percent(before: Any, after: Any) -> float:
    def split(t: Any) -> tuple[float, float]:
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total, total - idle

    total0, busy0 = split(before)
    total1, busy1 = split(after)
    if total1 <= total0:
        return 0.0
    return round(max(0.0, min(100.0, 100.0 * (busy1 - busy0) / (total1 - total0))), 1)


_CPU = _CpuMeter()
_default_backend: list[tuple[GpuBackend | None, str | None]] = []


def _default_gpu_backend() -> GpuBackend | None:
    if not _default_backend:
        _default_backend.append(_detect())
    return _default_backend[0][0]


def sample_system(
    *, gpu_backend: GpuBackend | str | None = _AUTO, disk_path: str = "/"
) -> dict[str, Any]:
    """CPU, memory, disk and GPU figures now, without blocking (the seed's keys and more)."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    backend = _default_gpu_backend() if gpu_backend == _AUTO else gpu_backend
    gpus: list[dict[str, Any]] = []
    if backend is not None and not isinstance(backend, str):
        try:
            gpus = [dict(g) for g in backend.read()]  # the monitor adds to each
        except Exception as exc:
            log.warning("reading GPUs through %s failed: %s", backend.name, exc)
            gpus = [{"id": -1, "error": f"{type(exc).__name__}: {exc}"}]
    return {
        "cpu_percent": _CPU.percent(),
        "memory_percent": memory.percent,
        "memory_available_gb": memory.available / 2**30,
        "gpus": gpus,
        "disk_percent": disk.percent,
        "disk_free_gb": disk.free / 2**30,
        "gpu_backend": None if backend is None or isinstance(backend, str) else backend.name,
    }


class _InstanceOrDefault:
    """A method callable on the class too, where it acts on a default-threshold instance."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, owner: type[HealthMonitor]) -> Callable[..., Any]:
        return types.MethodType(self.func, obj if obj is not None else owner._default())


class HealthMonitor:
    """Samples this machine and judges it against thresholds.

    ``HealthMonitor.get_system_health()`` is a staticmethod, as in the seed, and
    ``HealthMonitor.is_healthy(h)`` / ``check(h)`` work on the class with default
    thresholds; an instance carries its own thresholds, GPU backend, slowdown history, the
    GPU count Ray expects (``expected_gpus``) and optionally an Xid event watcher.
    """

    _default_instance: HealthMonitor | None = None

    def __init__(
        self,
        thresholds: HealthThresholds | FTConfig | Mapping[str, Any] | None = None,
        *,
        gpu_backend: GpuBackend | str | None = _AUTO,
        disk_path: str = "/",
        expected_gpus: int | None = None,
        watch_xids: bool = False,
        throttle_samples: tuple[int, int] = (3, 5),
    ) -> None:
        if isinstance(thresholds, HealthThresholds):
            self.thresholds = thresholds
        else:
            self.thresholds = HealthThresholds.from_config(thresholds)
        self._gpu_backend_arg = gpu_backend
        self._gpu_backend: GpuBackend | None = None
        self._nvml_error: str | None = None
        self._gpu_resolved = False
        self._resolved_at = 0.0
        self.disk_path = disk_path
        self.expected_gpus = expected_gpus
        self._watch_xids = watch_xids
        self._xids: XidWatcher | None = None
        self._xid_error: str | None = None
        self._throttle = ThrottleHistory(*throttle_samples)

    @classmethod
    def _default(cls) -> HealthMonitor:
        if cls._default_instance is None:
            cls._default_instance = cls()
        return cls._default_instance

    @property
    def gpu_backend(self) -> GpuBackend | None:
        """The GPU backend in use, resolved on first need (NVML is retried while it fails)."""
        now = time.monotonic()
        retry = (
            self._nvml_error is not None
            and not isinstance(self._gpu_backend, NvmlBackend)
            and now - self._resolved_at >= _NVML_RETRY_S
        )
        if not self._gpu_resolved or retry:
            arg = self._gpu_backend_arg
            if arg == _AUTO:
                self._gpu_backend, self._nvml_error = _detect()
            else:
                self._gpu_backend = arg  # type: ignore[assignment]
            self._gpu_resolved, self._resolved_at = True, now
            self._start_xid_watch()
        return self._gpu_backend

    def _start_xid_watch(self) -> None:
        backend = self._gpu_backend
        if not self._watch_xids or self._xids is not None or not isinstance(backend, NvmlBackend):
            return
        try:
            self._xids = XidWatcher(backend)
        except Exception as exc:  # events unsupported on this card or driver
            self._xid_error = f"{type(exc).__name__}: {exc}"

    @staticmethod
    def get_system_health() -> dict[str, Any]:
        """CPU, memory, disk and GPU figures of this machine now, without blocking."""
        return sample_system()

    def sample(self) -> dict[str, Any]:
        """Like :meth:`get_system_health`, through this monitor's GPU backend and disk,
        with the GPU facts judged over time (sustained slowdown, Xids, inventory)."""
        backend = self.gpu_backend
        health = sample_system(gpu_backend=backend, disk_path=self.disk_path)
        for gpu in health["gpus"]:
            slowed = bool(gpu.get("thermal_slowdown") or gpu.get("power_brake"))
            key = str(gpu.get("uuid") or gpu.get("id"))
            gpu["slowdown_sustained"] = self._throttle.add(key, slowed)
        health["gpu_expected"] = self.expected_gpus
        health["nvml_error"] = self._nvml_error
        if self._xids is not None:
            critical, recent = self._xids.latched()
            health["xid_critical"], health["xid_recent"] = critical, recent
        health["xid_watch"] = "on" if self._xids is not None else (self._xid_error or "off")
        return health

    @_InstanceOrDefault
    def check(self, health: Mapping[str, Any] | None = None) -> HealthReport:
        """Judge a health dict (sampled now when None); every problem becomes a reason."""
        if health is None:
            health = self.sample()
        return HealthReport.of(self.findings(health))

    @_InstanceOrDefault
    def findings(self, health: Mapping[str, Any]) -> list[Finding]:
        """Every problem in a health dict with its severity; utilisation is not one."""
        limits = self.thresholds
        found: list[Finding] = []
        for key, limit, label in (
            ("cpu_percent", limits.cpu, "CPU"),
            ("memory_percent", limits.memory, "memory"),
            ("disk_percent", limits.disk, "disk"),
        ):
            value = health.get(key)
            if value is not None and limit is not None and value > limit:
                reason = f"{label} at {value:.1f}% exceeds {limit:g}%"
                found.append(Finding(Severity.DEGRADED, reason))
        free = health.get("disk_free_gb")
        if free is not None and free < limits.disk_full_gb:
            found.append(Finding(Severity.FATAL, f"disk full ({free * 1024:.0f} MB free)"))
        found.extend(gpu_node_findings(health))
        for gpu in health.get("gpus") or ():
            found.extend(gpu_findings(gpu, limits))
        return found

    @_InstanceOrDefault
    def is_healthy(self, health: Mapping[str, Any] | None = None) -> bool:
        """True when :meth:`check` finds nothing wrong."""
        return bool(self.check(health))


_RECOVERY_ACTIONS = {
    1: "GPU reset",
    2: "node reboot",
    3: "drain peer-to-peer traffic",
    4: "drain and reset",
    5: "recover the IMEX domain",
    6: "bus reset",
    7: "system reboot",
}


def gpu_label(gpu: Mapping[str, Any]) -> str:
    """'GPU 0 (GPU-uuid, 00000000:3B:00.0)': NVML's index need not match CUDA's or Ray's."""
    ids = [str(v) for v in (gpu.get("uuid"), gpu.get("pci_bus_id")) if v]
    return f"GPU {gpu.get('id')}" + (f" ({', '.join(ids)})" if ids else "")


def gpu_node_findings(health: Mapping[str, Any]) -> list[Finding]:
    """Findings about the node's GPUs as a whole: NVML start-up, inventory, Xid events."""
    fatal = Severity.FATAL
    found = []
    expected = health.get("gpu_expected") or 0
    readings = [g for g in health.get("gpus") or () if g.get("id", -1) >= 0]
    if health.get("nvml_error") and expected:
        reason = (
            f"NVML did not start on a node Ray counts {expected} GPUs on: {health['nvml_error']}"
        )
        found.append(Finding(fatal, reason))
    elif (
        expected
        and len(readings) < expected
        and not any(g.get("hung") for g in health.get("gpus") or ())
    ):
        found.append(Finding(fatal, f"{len(readings)} GPUs visible, Ray counts {expected}"))
    for event in health.get("xid_critical") or ():
        reason = f"critical Xid {event['xid']} on GPU {event.get('gpu_uuid') or '?'}"
        found.append(Finding(fatal, reason))
    return found


def gpu_findings(gpu: Mapping[str, Any], limits: HealthThresholds) -> list[Finding]:
    """The faults of one GPU reading, classified as DCGM does."""
    label = gpu_label(gpu)
    fatal, degraded = Severity.FATAL, Severity.DEGRADED
    if gpu.get("hung"):
        return [Finding(fatal, f"{gpu.get('error') or 'NVML hung'}; the driver is wedged")]
    if gpu.get("lost"):
        return [Finding(fatal, f"{label} is lost (NVML: GPU is lost); the node needs a reset")]
    if gpu.get("reset_required"):
        return [Finding(fatal, f"{label} requires a reset (NVML: ResetRequired)")]
    found = []
    if gpu.get("error"):
        found.append(Finding(degraded, f"{label} could not be read: {gpu['error']}"))
    for field, error in sorted((gpu.get("errors") or {}).items()):
        found.append(Finding(degraded, f"{label}: reading {field} failed: {error}"))
    if gpu.get("ecc_double_bit"):
        reason = f"{label} has {gpu['ecc_double_bit']} volatile double-bit ECC errors"
        found.append(Finding(fatal, reason))
    if gpu.get("retired_pages_pending"):
        found.append(Finding(fatal, f"{label} has memory pages pending retirement (reset needed)"))
    if gpu.get("remap_failure"):
        found.append(Finding(fatal, f"{label} failed to remap a memory row (replace the GPU)"))
    elif gpu.get("remap_pending"):
        found.append(Finding(fatal, f"{label} has a memory row remap pending (reset needed)"))
    action = gpu.get("recovery_action")
    if action:
        what = _RECOVERY_ACTIONS.get(int(action), f"action {action}")
        found.append(Finding(fatal, f"{label} asks for recovery: {what}"))
    if gpu.get("slowdown_sustained"):
        kind = "thermal" if gpu.get("thermal_slowdown") else "power-brake"
        found.append(Finding(degraded, f"{label} is in sustained hardware {kind} slowdown"))
    temp = gpu.get("temperature")
    own_limit = gpu.get("temperature_max") or gpu.get("temperature_limit")
    if temp is not None and own_limit and temp >= float(own_limit):
        found.append(Finding(degraded, f"{label} at {temp:g} C reaches its limit {own_limit:g} C"))
    elif temp is not None and not own_limit and temp > limits.gpu_temp:
        found.append(Finding(degraded, f"{label} at {temp:g} C exceeds {limits.gpu_temp:g} C"))
    mem_temp, mem_max = gpu.get("memory_temperature"), gpu.get("memory_temperature_max")
    if mem_temp is not None and mem_max and mem_temp >= float(mem_max):
        found.append(Finding(degraded, f"{label} HBM at {mem_temp:g} C reaches {mem_max:g} C"))
    used, total = gpu.get("memory_used"), gpu.get("memory_total")
    if used is not None and total and limits.gpu_memory is not None:
        percent = 100.0 * used / total
        if percent > limits.gpu_memory:
            reason = f"{label} memory at {percent:.1f}% exceeds {limits.gpu_memory:g}%"
            found.append(Finding(degraded, reason))
    return found
