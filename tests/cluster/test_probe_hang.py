"""A HealthProbe actor whose NVML hangs: it still answers pings, and its check says so."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from ray_ft.actors.health_probe import HealthProbe
from ray_ft.health.gpu import NvmlBackend
from ray_ft.health.monitor import HealthMonitor
from tests import nvml_standin as nv
from tests.raytools import cluster_session

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


class HangingProbe(HealthProbe):
    """A real probe actor whose GPU driver never answers (a stand-in NVML that blocks)."""

    def __init__(self) -> None:
        super().__init__()
        backend = NvmlBackend(nv.make([nv.GOOD], hang=threading.Event()), call_timeout=5.0)
        self.monitor = HealthMonitor(gpu_backend=backend)


def test_probe_answers_liveness_while_nvml_hangs():
    with cluster_session(1):
        probe = ray.remote(HangingProbe).options(num_cpus=0, max_concurrency=4).remote()
        ray.get(probe.ping.remote(), timeout=60)  # started
        check = probe.check.remote()
        time.sleep(0.5)  # the check is now inside the hung NVML call
        ray.get(probe.ping.remote(), timeout=10)  # the heartbeat is not stuck behind NVML
        still_checking, _ = ray.wait([check], timeout=0)
        assert still_checking == []
        answer = ray.get(check, timeout=30)  # the deadline turns the hang into a verdict
        assert answer["severity"] == "fatal"
        assert any("NVML hung" in r for r in answer["reasons"]), answer["reasons"]
