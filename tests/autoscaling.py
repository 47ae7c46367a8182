"""Ray's real autoscaler over real raylets on this machine (the fake multi-node provider).

``ray.cluster_utils.AutoscalingCluster`` reads a provider ``example.yaml`` that Ray's wheel
does not ship, so the whole config is built here; the head is started with ``ray start``
and the autoscaler launches and terminates real raylets (inside its own process, so they
are the head's descendants). The head runs with ``--block`` in a session of its own and is
stopped with everything under it: never ``ray stop --force``, which would kill every Ray
process on the machine (``AutoscalingCluster`` runs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import ray

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
HEAD_PORT = 6391


def autoscaling_config(
    head_resources: dict[str, float],
    worker_types: dict[str, dict[str, Any]],
    *,
    idle_timeout_minutes: float = 0.2,
) -> dict[str, Any]:
    """A complete fake-multinode cluster config (the fields of Ray's example.yaml)."""
    types = {name: {"node_config": {}, **spec} for name, spec in worker_types.items()}
    types["ray.head.default"] = {"resources": head_resources, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "ray-ft-fake",
        "max_workers": sum(t.get("max_workers", 0) for t in worker_types.values()),
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{HEAD_PORT}",
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_FAKE_CLUSTER": "1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Ray 2.60's `ray start` turns token authentication on once a token exists
            # (~/.ray/auth_token, written by any earlier local ray.init); these tests'
            # driver is a plain client: the test cluster runs without it
            "RAY_AUTH_MODE": "disabled",
        }
    )
    return env


def stop_tree(process: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a process and every process under it (the head's GCS, raylet, autoscaler and
    the raylets the fake provider started inside it): SIGTERM, then SIGKILL what is left."""
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(process.pid)
        tree = [parent, *parent.children(recursive=True)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace)
    process.wait(grace)


@contextlib.contextmanager
def autoscaling_cluster(
    head_resources: dict[str, float],
    worker_types: dict[str, dict[str, Any]],
    *,
    idle_timeout_minutes: float = 0.2,
) -> Iterator[str]:
    """Start the head with the autoscaler (``ray start --head --block``); yield its address;
    stop the processes it started, and only those."""
    config = autoscaling_config(
        head_resources, worker_types, idle_timeout_minutes=idle_timeout_minutes
    )
    head = dict(head_resources)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--autoscaling-config={f.name}",
        "--node-ip-address=127.0.0.1",
        f"--port={HEAD_PORT}",
        "--include-dashboard=false",
        f"--num-cpus={int(head.pop('CPU', 0))}",
        f"--num-gpus={int(head.pop('GPU', 0))}",
    ]
    if head:
        cmd.append(f"--resources={json.dumps(head)}")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in Path(log.name).read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                msg = f"the head did not start: {Path(log.name).read_text()[-3000:]}"
                raise RuntimeError(msg)
            time.sleep(0.2)
        yield f"127.0.0.1:{HEAD_PORT}"
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        stop_tree(process)
        log.close()
        for path in (f.name, log.name):
            os.unlink(path)


def worker_count(resource: str) -> int:
    """Alive nodes that have ``resource`` (the autoscaled workers)."""
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource))


def wait_for_count(resource: str, count: int, timeout: float) -> float:
    """Seconds until exactly ``count`` alive nodes have ``resource``; raises on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if worker_count(resource) == count:
            return time.monotonic() - start
        time.sleep(0.2)
    msg = f"{worker_count(resource)} nodes with {resource}, wanted {count} in {timeout}s"
    raise TimeoutError(msg)


class Peaks:
    """The most alive nodes seen per resource while the ``with`` block runs (sampled every
    0.2 s from a thread): a node that comes and goes mid-run still counts."""

    def __init__(self, *resources: str) -> None:
        self.peak = dict.fromkeys(resources, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for resource, seen in self.peak.items():
                self.peak[resource] = max(seen, worker_count(resource))
            if self._stop.wait(0.2):
                return

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for resource, seen in self.peak.items():  # one last look after the work
            self.peak[resource] = max(seen, worker_count(resource))

    def __getitem__(self, resource: str) -> int:
        return self.peak[resource]
