"""GPU health against a stand-in NVML that raises what real NVML raises; real psutil."""

from __future__ import annotations

import threading
import time

import pytest

from ray_ft.health.gpu import GpuBackendUnavailable, NvmlBackend, ThrottleHistory
from ray_ft.health.monitor import HealthMonitor, HealthThresholds, Severity
from tests import nvml_standin as nv


def monitor(devices, *, expected=None, xids=(), **kwargs):
    backend = NvmlBackend(nv.make(devices, xids=xids, **kwargs), call_timeout=2.0)
    return HealthMonitor(
        HealthThresholds(), gpu_backend=backend, expected_gpus=expected, watch_xids=bool(xids)
    )


def gpu_verdict(m):
    """The report over the GPU findings only (the machine's own disk and memory aside)."""
    health = m.sample()
    health.update(memory_percent=10.0, disk_percent=10.0, disk_free_gb=100.0)
    return m.check(health), health


def dev(**change):
    return {**nv.GOOD, **change}


def test_busy_gpu_at_98_percent_memory_and_full_load_is_ok():
    report, health = gpu_verdict(monitor([dev(), dev()], expected=2))
    assert report.severity is Severity.OK, report.reasons
    (gpu, _) = health["gpus"]
    assert gpu["load"] == 1.0 and gpu["memory_used"] / gpu["memory_total"] > 0.97
    assert gpu["uuid"] == "GPU-0000" and gpu["pci_bus_id"] == "00000000:01:00.0"
    assert "retired_pages_pending" in gpu["unsupported"]  # NotSupported on Hopper: unknown


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"ecc": 2}, "double-bit ECC"),
        ({"pending": 1}, "pending retirement"),
        ({"rows": (0, 1, 1, 0)}, "remap pending"),
        ({"rows": (0, 4, 0, 1)}, "failed to remap"),
        ({"fields": {**nv.GOOD["fields"], 230: 1}}, "recovery: GPU reset"),
        ({"util": nv.ResetRequired}, "requires a reset"),
    ],
)
def test_fatal_gpu_faults(change, words):
    report, _ = gpu_verdict(monitor([dev(), dev(**change)]))
    assert report.severity is Severity.FATAL
    (reason,) = report.reasons
    assert words in reason and reason.startswith("GPU 1 (GPU-0001, 00000000:02:00.0)")


def test_lost_gpu_is_fatal():
    report, health = gpu_verdict(monitor(["lost", dev()]))
    assert report.severity is Severity.FATAL and "is lost" in report.reasons[0]
    assert health["gpus"][0]["lost"] is True


def test_missing_gpu_against_rays_count_is_fatal():
    report, _ = gpu_verdict(monitor([dev()], expected=2))
    assert report.severity is Severity.FATAL
    assert report.reasons == ("1 GPUs visible, Ray counts 2",)


def test_nvml_init_failure_on_a_gpu_node_is_fatal_and_retried(monkeypatch):
    with pytest.raises(GpuBackendUnavailable, match="NVML did not start"):
        NvmlBackend(nv.make([], init_error=nv.DriverNotLoaded()))
    import ray_ft.health.monitor as health

    failing = nv.make([dev()], init_error=nv.DriverNotLoaded())
    monkeypatch.setattr(health, "NvmlBackend", lambda: NvmlBackend(failing))
    monkeypatch.setattr(health, "GPUtilBackend", _no_gputil)
    m = HealthMonitor(expected_gpus=1)
    report = m.check({**m.sample(), "memory_percent": 1, "disk_percent": 1, "disk_free_gb": 9})
    assert report.severity is Severity.FATAL
    assert "NVML did not start on a node Ray counts 1 GPUs" in report.reasons[0]
    # no GPU expected (a CPU node): no NVML is the normal state
    m = HealthMonitor(expected_gpus=0)
    assert m.check({**m.sample(), "memory_percent": 1, "disk_percent": 1, "disk_free_gb": 9})


def _no_gputil():
    raise GpuBackendUnavailable("GPUtil not installed")


def test_thermal_slowdown_is_degraded_only_when_sustained():
    m = monitor([dev(reasons=0x40)])
    severities = [gpu_verdict(m)[0].severity for _ in range(4)]
    assert severities == [Severity.OK, Severity.OK, Severity.DEGRADED, Severity.DEGRADED]
    history = ThrottleHistory(3, 5)
    assert [history.add("g", s) for s in (True, False, True, False, True)][-1] is True
    assert history.add("g", False) is False


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"temp": 90}, "reaches its limit 90 C"),  # the GPU's own max (field 196)
        ({"fields": {**nv.GOOD["fields"], 82: 95}}, "HBM at 95 C reaches 95 C"),
        ({"temp": nv.Unknown}, "reading temperature failed: NVMLError_Unknown"),
    ],
)
def test_degraded_gpu_states(change, words):
    report, _ = gpu_verdict(monitor([dev(**change)]))
    assert report.severity is Severity.DEGRADED
    assert any(words in r for r in report.reasons), report.reasons


def test_deprecated_calls_give_way_to_successors_and_fall_back():
    new = nv.make([dev()])
    NvmlBackend(new).read()
    assert "tempV" in new.calls and "reasonsV" in new.calls and "temp" not in new.calls
    old = nv.make([dev()], deprecated_only=True)
    (gpu,) = NvmlBackend(old).read()
    assert "temp" in old.calls and "reasons" in old.calls and gpu["temperature"] == 70
    # a successor that the driver lacks (FunctionNotFound) falls back too
    gone = nv.make([dev()])
    gone.nvmlDeviceGetCurrentClocksEventReasons = lambda h: (_ for _ in ()).throw(
        nv.FunctionNotFound()
    )
    (gpu,) = NvmlBackend(gone).read()
    assert gpu["thermal_slowdown"] is False and "reasons" in gone.calls


def test_critical_xid_is_latched_and_application_xids_are_not_faults():
    m = monitor([dev()], xids=[(13, 0), (43, 0)])
    time.sleep(0.3)
    report, health = gpu_verdict(m)
    assert report.severity is Severity.OK
    assert [e["xid"] for e in health["xid_recent"]] == [13, 43]
    m._xids._nvml.queue_xid(79)  # fallen off the bus
    time.sleep(1.5)
    for _ in range(2):  # latched: still fatal at the next check
        report, _ = gpu_verdict(m)
        assert report.severity is Severity.FATAL
        assert report.reasons == ("critical Xid 79 on GPU GPU-0000",)
    m._xids.stop()


def test_hung_nvml_is_fatal_within_the_deadline():
    release = threading.Event()
    backend = NvmlBackend(nv.make([dev()], hang=release), call_timeout=0.5)
    m = HealthMonitor(gpu_backend=backend)
    try:
        start = time.monotonic()
        report, _ = gpu_verdict(m)
        assert time.monotonic() - start < 2.0
        assert report.severity is Severity.FATAL and "NVML hung" in report.reasons[0]
        start = time.monotonic()
        report, _ = gpu_verdict(m)  # the stuck call holds the thread: fail fast, no pile-up
        assert time.monotonic() - start < 0.5 and report.fatal
    finally:
        release.set()
    time.sleep(0.1)
    assert gpu_verdict(m)[0].severity is Severity.OK  # the driver came back


def test_raw_lists_every_call_with_latency_and_exception_class():
    calls = NvmlBackend(nv.make([dev()])).raw()
    by_call = {c["call"]: c for c in calls}
    assert by_call["nvmlDeviceGetRetiredPagesPendingStatus"]["error"] == "NVMLError_NotSupported"
    assert by_call["nvmlDeviceGetRemappedRows"]["value"] == [0, 0, 0, 0]
    assert all(c["latency_ms"] >= 0 for c in calls)


def test_every_nvml_reading_fills_a_documented_field():
    """The table of NVML reads writes only keys GpuReading declares (one registry)."""
    from ray_ft.health.gpu import GpuReading
    from ray_ft.health.gpu.nvml import _READS

    declared = set(GpuReading.__annotations__)
    written = {key for read in _READS for key in read.keys}
    assert written <= declared, written - declared
    assert len({read.label for read in _READS}) == len(_READS)
