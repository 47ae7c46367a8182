"""HealthMonitor: non-blocking sampling, thresholds, NVML parsing against a stand-in."""

from __future__ import annotations

import pickle
import time
import types
from collections import namedtuple

import pytest

from ray_ft.health.monitor import (
    GpuBackendUnavailable,
    HealthMonitor,
    HealthReport,
    HealthThresholds,
    NvmlBackend,
)

SEED_KEYS = {
    "cpu_percent",
    "memory_percent",
    "memory_available_gb",
    "gpus",
    "disk_percent",
    "disk_free_gb",
}
GPU_KEYS = {"id", "load", "memory_used", "memory_total", "temperature"}


def fake_pynvml(devices, *, init_error=None):
    """A module with pynvml's API over a list of device dicts (or 'lost')."""
    m = types.ModuleType("fake_pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    Util = namedtuple("Util", "gpu memory")
    Mem = namedtuple("Mem", "total free used")
    m.NVMLError = NVMLError
    m.NVMLError_GpuIsLost = NVMLError_GpuIsLost
    m.NVMLError_NotSupported = NVMLError_NotSupported
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    m.NVML_VOLATILE_ECC = 0
    m.nvmlClocksThrottleReasonHwThermalSlowdown = 0x40

    def init():
        if init_error:
            raise init_error

    def dev(h):
        d = devices[h]
        if d == "lost":
            raise NVMLError_GpuIsLost()
        return d

    def field(name):
        def get(h, *args):
            value = dev(h).get(name)
            if value is None:
                raise NVMLError_NotSupported()
            return value

        return get

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: dev(h).get("name", b"Fake GPU")
    m.nvmlDeviceGetUtilizationRates = lambda h: Util(dev(h)["util"], 0)
    m.nvmlDeviceGetMemoryInfo = lambda h: Mem(dev(h)["total"], 0, dev(h)["used"])
    m.nvmlDeviceGetTemperature = field("temp")
    m.nvmlDeviceGetTemperatureThreshold = field("slowdown")
    m.nvmlDeviceGetTotalEccErrors = field("ecc")
    m.nvmlDeviceGetRetiredPagesPendingStatus = field("pending")
    m.nvmlDeviceGetCurrentClocksThrottleReasons = field("throttle")
    return m


GOOD = {
    "util": 50,
    "total": 80 * 2**30,
    "used": 8 * 2**30,
    "temp": 60,
    "slowdown": 90,
    "ecc": 0,
    "pending": 0,
    "throttle": 0,
}


def monitor(devices, **thresholds):
    backend = NvmlBackend(fake_pynvml(devices))
    return HealthMonitor(HealthThresholds(**thresholds), gpu_backend=backend)


def test_seed_class_level_api_and_speed():
    start = time.perf_counter()
    health = HealthMonitor.get_system_health()
    elapsed = time.perf_counter() - start
    assert health.keys() >= SEED_KEYS
    assert elapsed < 0.5, "get_system_health must not block on psutil's interval"
    assert isinstance(HealthMonitor.is_healthy(health), bool)
    assert isinstance(HealthMonitor.check(health), HealthReport)


def test_no_gpu_is_healthy():
    m = HealthMonitor(gpu_backend=None)
    health = m.sample()
    assert health["gpus"] == []
    assert m.is_healthy({**health, "cpu_percent": 1, "memory_percent": 1, "disk_percent": 1})


def test_nvml_parse_good_gpu():
    m = monitor([GOOD])
    (gpu,) = m.sample()["gpus"]
    assert gpu.keys() >= GPU_KEYS
    assert (
        gpu["load"] == 0.5 and gpu["memory_total"] == 80 * 1024 and gpu["memory_used"] == 8 * 1024
    )
    assert gpu["temperature"] == 60 and gpu["temperature_limit"] == 90
    assert gpu["name"] == "Fake GPU"
    assert m.check({"gpus": [gpu]}) == HealthReport(True, ())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ecc": 2}, "double-bit ECC"),
        ({"pending": 1}, "pending retirement"),
        ({"temp": 91}, "91 C reaches its limit 90 C"),
        ({"used": 79 * 2**30}, "memory at 98.8%"),
    ],
)
def test_nvml_unhealthy_reasons(change, reason):
    m = monitor([GOOD, {**GOOD, **change}], gpu_memory=95.0)
    report = m.check(m.sample() | {"cpu_percent": 0, "memory_percent": 0, "disk_percent": 0})
    assert not report
    assert len(report.reasons) == 1 and reason in report.reasons[0]
    assert report.reasons[0].startswith("GPU 1")


def test_lost_gpu_and_unsupported_fields():
    unsupported = {**GOOD, "slowdown": None, "ecc": None, "pending": None, "throttle": None}
    m = monitor(["lost", unsupported], gpu_temp=70)
    lost, partial = m.sample()["gpus"]
    assert lost["lost"] is True
    assert partial["ecc_double_bit"] is None and partial["temperature_limit"] is None
    report = m.check({"gpus": [lost, {**partial, "temp": 75, "temperature": 75}]})
    assert "is lost" in report.reasons[0]
    assert "75 C exceeds 70 C" in report.reasons[1]  # no NVML limit: configured threshold


def test_nvml_init_failure_means_no_backend():
    with pytest.raises(GpuBackendUnavailable, match="NVML did not start"):
        NvmlBackend(fake_pynvml([], init_error=RuntimeError("driver not loaded")))


def test_real_nvml_absent_here_is_healthy_state():
    health = HealthMonitor().get_system_health()
    assert isinstance(health["gpus"], list)


def test_thresholds_per_instance():
    strict = HealthMonitor({"cpu_threshold": 10.0}, gpu_backend=None)
    report = strict.check(
        {"cpu_percent": 50.0, "memory_percent": 99.0, "disk_percent": 1.0, "gpus": []}
    )
    assert report.reasons == ("CPU at 50.0% exceeds 10%", "memory at 99.0% exceeds 95%")
    assert HealthMonitor.is_healthy({"cpu_percent": 50.0, "gpus": []})


def test_report_and_thresholds_pickle():
    r = HealthReport(False, ("x",))
    assert pickle.loads(pickle.dumps(r)) == r
    t = HealthThresholds(cpu=1)
    assert pickle.loads(pickle.dumps(t)) == t
