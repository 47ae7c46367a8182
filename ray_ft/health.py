"""HealthMonitor: this machine's CPU, memory, disk and GPU state, and a verdict on it.

Sampling never blocks (psutil's CPU counter is primed once and read without an interval).
GPU data comes from NVML (nvidia-ml-py) and, failing that, GPUtil; both are imported
lazily, and a machine without a GPU is simply healthy. NVML also reveals what GPUtil cannot:
double-bit ECC errors, pending page retirement, a lost GPU, hardware thermal slowdown.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import psutil

from ray_ft.config import FTConfig

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
    "sample_system",
]

log = logging.getLogger(__name__)

_DISK_FULL_GB = 0.1  # less free space than this is a full disk: fatal
_CPU_MIN_INTERVAL_S = 0.1  # the shortest interval a CPU figure is measured over


class Severity(str, enum.Enum):
    """How bad a health finding is: ``fatal`` excludes a node, ``degraded`` pauses new work."""

    OK = "ok"
    DEGRADED = "degraded"
    FATAL = "fatal"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """0 for ok, 1 for degraded, 2 for fatal (for taking the worst of several)."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.OK: 0, Severity.DEGRADED: 1, Severity.FATAL: 2}


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

    def read(self) -> list[dict[str, Any]]:
        """One dict per GPU."""
        ...


class GpuBackendUnavailable(RuntimeError):
    """The backend's library or driver is missing: treat the machine as having no GPU."""


class NvmlBackend:
    """GPU data through NVML; ``nvml`` may be any module with pynvml's API (tests use one)."""

    name = "nvml"

    def __init__(self, nvml_module: types.ModuleType | None = None) -> None:
        nvml: Any = nvml_module
        if nvml is None:
            try:
                import pynvml

                nvml = pynvml
            except ImportError as exc:
                msg = "nvidia-ml-py (pynvml) is not installed"
                raise GpuBackendUnavailable(msg) from exc
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            msg = f"NVML is not usable here: {exc}"
            raise GpuBackendUnavailable(msg) from exc

    def read(self) -> list[dict[str, Any]]:
        """Query every device; a device that answers GPU-is-lost is reported as lost."""
        nvml = self._nvml
        return [self._read_one(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]

    def _read_one(self, nvml: Any, index: int) -> dict[str, Any]:
        gpu: dict[str, Any] = {
            "id": index,
            "load": None,
            "memory_used": None,
            "memory_total": None,
            "temperature": None,
            "temperature_limit": None,
            "ecc_double_bit": None,
            "retired_pages_pending": None,
            "thermal_slowdown": None,
            "lost": False,
        }
        lost_error = getattr(nvml, "NVMLError_GpuIsLost", None)

        def query(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as exc:
                if lost_error is not None and isinstance(exc, lost_error):
                    raise
                return None  # NotSupported, NoPermission...: that field stays unknown

        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = query(lambda: nvml.nvmlDeviceGetName(handle))
            gpu["name"] = name.decode() if isinstance(name, bytes) else name
            util = query(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
            if util is not None:
                gpu["load"] = util.gpu / 100.0
            mem = query(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
            if mem is not None:
                gpu["memory_used"] = mem.used / 2**20
                gpu["memory_total"] = mem.total / 2**20
            gpu["temperature"] = query(
                lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            )
            gpu["temperature_limit"] = query(
                lambda: nvml.nvmlDeviceGetTemperatureThreshold(
                    handle, nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
                )
            )
            gpu["ecc_double_bit"] = query(
                lambda: nvml.nvmlDeviceGetTotalEccErrors(
                    handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
                )
            )
            pending = query(lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
            gpu["retired_pages_pending"] = None if pending is None else bool(pending)
            reasons = query(lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
            if reasons is not None:
                flag = nvml.nvmlClocksThrottleReasonHwThermalSlowdown
                gpu["thermal_slowdown"] = bool(reasons & flag)
        except Exception as exc:
            if lost_error is not None and isinstance(exc, lost_error):
                gpu["lost"] = True
            else:
                gpu["error"] = f"{type(exc).__name__}: {exc}"
        return gpu


class GPUtilBackend:
    """GPU data through GPUtil (nvidia-smi): load, memory and temperature only."""

    name = "gputil"

    def __init__(self) -> None:
        try:
            import GPUtil
        except Exception as exc:  # ImportError, or distutils missing on Python 3.12
            msg = f"GPUtil is not usable here: {exc}"
            raise GpuBackendUnavailable(msg) from exc
        self._gputil = GPUtil

    def read(self) -> list[dict[str, Any]]:
        """One dict per GPU that nvidia-smi lists; none when nvidia-smi is absent."""
        try:
            gpus = self._gputil.getGPUs()
        except Exception:
            return []
        return [
            {
                "id": g.id,
                "load": g.load,
                "memory_used": g.memoryUsed,
                "memory_total": g.memoryTotal,
                "temperature": g.temperature,
                "name": getattr(g, "name", None),
            }
            for g in gpus
        ]


def detect_gpu_backend() -> GpuBackend | None:
    """NVML when it initializes, else GPUtil when it imports, else None (no GPU)."""
    for factory in (NvmlBackend, GPUtilBackend):
        try:
            backend: GpuBackend = factory()
        except GpuBackendUnavailable as exc:
            log.debug("GPU backend unavailable: %s", exc)
            continue
        return backend
    return None


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
_default_backend: list[GpuBackend | None] = []


def _default_gpu_backend() -> GpuBackend | None:
    if not _default_backend:
        _default_backend.append(detect_gpu_backend())
    return _default_backend[0]


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
            gpus = backend.read()
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
    thresholds; an instance carries its own thresholds and GPU backend (:meth:`sample`).
    """

    _default_instance: HealthMonitor | None = None

    def __init__(
        self,
        thresholds: HealthThresholds | FTConfig | Mapping[str, Any] | None = None,
        *,
        gpu_backend: GpuBackend | str | None = _AUTO,
        disk_path: str = "/",
    ) -> None:
        if isinstance(thresholds, HealthThresholds):
            self.thresholds = thresholds
        else:
            self.thresholds = HealthThresholds.from_config(thresholds)
        self._gpu_backend_arg = gpu_backend
        self._gpu_backend: GpuBackend | None = None
        self._gpu_resolved = False
        self.disk_path = disk_path

    @classmethod
    def _default(cls) -> HealthMonitor:
        if cls._default_instance is None:
            cls._default_instance = cls()
        return cls._default_instance

    @property
    def gpu_backend(self) -> GpuBackend | None:
        """The GPU backend in use, resolved on first need."""
        if not self._gpu_resolved:
            arg = self._gpu_backend_arg
            self._gpu_backend = _default_gpu_backend() if arg == _AUTO else arg  # type: ignore[assignment]
            self._gpu_resolved = True
        return self._gpu_backend

    @staticmethod
    def get_system_health() -> dict[str, Any]:
        """CPU, memory, disk and GPU figures of this machine now, without blocking."""
        return sample_system()

    def sample(self) -> dict[str, Any]:
        """Like :meth:`get_system_health`, through this monitor's GPU backend and disk."""
        return sample_system(gpu_backend=self.gpu_backend, disk_path=self.disk_path)

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
        for gpu in health.get("gpus") or ():
            found.extend(_gpu_findings(gpu, limits))
        return found

    @_InstanceOrDefault
    def is_healthy(self, health: Mapping[str, Any] | None = None) -> bool:
        """True when :meth:`check` finds nothing wrong."""
        return bool(self.check(health))


def _gpu_findings(gpu: Mapping[str, Any], limits: HealthThresholds) -> list[Finding]:
    label = f"GPU {gpu.get('id')}"
    fatal, degraded = Severity.FATAL, Severity.DEGRADED
    if gpu.get("lost"):
        return [Finding(fatal, f"{label} is lost (NVML: GPU is lost); the node needs a reset")]
    found = []
    if gpu.get("error"):
        found.append(Finding(degraded, f"{label} could not be read: {gpu['error']}"))
    temp = gpu.get("temperature")
    nvml_limit = gpu.get("temperature_limit")
    limit = float(nvml_limit) if nvml_limit else limits.gpu_temp
    if temp is not None and temp > limit:
        found.append(Finding(degraded, f"{label} at {temp:g} C exceeds {limit:g} C"))
    used, total = gpu.get("memory_used"), gpu.get("memory_total")
    if used is not None and total and limits.gpu_memory is not None:
        percent = 100.0 * used / total
        if percent > limits.gpu_memory:
            reason = f"{label} memory at {percent:.1f}% exceeds {limits.gpu_memory:g}%"
            found.append(Finding(degraded, reason))
    if gpu.get("ecc_double_bit"):
        reason = f"{label} has {gpu['ecc_double_bit']} volatile double-bit ECC errors"
        found.append(Finding(fatal, reason))
    if gpu.get("retired_pages_pending"):
        found.append(Finding(fatal, f"{label} has memory pages pending retirement (reset needed)"))
    if gpu.get("thermal_slowdown"):
        found.append(Finding(degraded, f"{label} is in hardware thermal slowdown"))
    return found
