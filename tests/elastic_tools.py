"""Fault helpers for elastic clusters on real local Ray (shared by tests and bench/).

A preemption notice (``drain_node`` with ``DRAIN_NODE_REASON_PREEMPTION`` and a deadline,
then the node removed at the deadline) and a GCS outage (the head's RocksDB-backed GCS
killed and started again on its port, as a supervisor would).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from ray_ft import raycompat
from tests.raytools import start_cluster, wait_for

__all__ = [
    "busy_worker",
    "drain_deadline",
    "gcs_outage",
    "persistent_cluster",
    "preempt_one",
    "restore",
    "run_through_outage",
]


def busy_worker(cluster, where: str):
    """A worker node (not the head) on which a call has started."""

    def find():
        started = set()
        for name in os.listdir(where):
            with open(os.path.join(where, name)) as f:
                started.add(f.read())
        busy = [n for n in cluster.worker_nodes if n.node_id in started]
        return busy[0] if busy else None

    return wait_for(find, timeout=30, interval=0.05)


def preempt_one(cluster, after: float, deadline_s: float, out: dict, where: str) -> None:
    """``after`` seconds in, drain a busy worker (deadline ``deadline_s``); remove it then."""
    time.sleep(after)
    victim = busy_worker(cluster, where)
    raycompat.drain_node(cluster.gcs_address, victim.node_id, "preemption", deadline_s)
    deadline = drain_deadline(victim.node_id)
    out["victim"] = victim.node_id
    time.sleep(max(0.0, deadline - time.time()))
    cluster.remove_node(victim, allow_graceful=False)


def drain_deadline(node_id: str) -> float:
    """The deadline (wall seconds) Ray holds for a node it accepted to drain: Ray's drain
    list shows it a moment after (the CLI of Ray 2.44 returns first: read at once, it
    missed the node in 1 run of 30 here)."""
    return wait_for(lambda: (raycompat.draining_nodes() or {}).get(node_id), 30, 0.05)


def restore(cluster, n_nodes: int = 4) -> None:
    """Add 1-CPU nodes until the cluster has ``n_nodes`` alive again."""
    while len(cluster.list_all_nodes()) < n_nodes:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"]) == n_nodes, timeout=60)


def rocksdb_gcs() -> bool:
    """This Ray's GCS can keep its tables in RocksDB (2.60 can; 2.44 says "Unsupported GCS
    storage type: rocksdb"): read off the GCS binary itself, not guessed from a version."""
    import glob

    root = os.path.join(os.path.dirname(ray.__file__), "core")
    found = glob.glob(os.path.join(root, "**", "gcs_server"), recursive=True)
    if not found:
        return False
    with open(found[0], "rb") as f:
        return b"RocksDbStoreClient" in f.read()


@contextlib.contextmanager
def persistent_cluster(
    storage: str, n_nodes: int = 3, system_config: dict | None = None
) -> Iterator[Cluster]:
    """Nodes whose GCS keeps its tables in RocksDB under ``storage`` (no Redis), so it
    can be killed and started again; the environment is set only while Ray starts. On a
    Ray without RocksDB storage, an ordinary cluster (its GCS cannot come back)."""
    env = {"RAY_gcs_storage": "rocksdb", "RAY_gcs_storage_path": str(storage)}
    if not rocksdb_gcs():
        env = {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster = start_cluster(n_nodes, system_config=system_config)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield cluster
    finally:
        process = cluster.__dict__.get("_restarted_gcs")
        ray.shutdown()
        cluster.shutdown()
        if process is not None:
            process.kill()


def gcs_outage(cluster, after: float, seconds: float, marks: dict) -> None:
    """``after`` seconds in, kill the GCS; start it again on its port ``seconds`` later."""
    time.sleep(after)
    process = cluster.__dict__.get("_restarted_gcs") or (
        cluster.head_node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process
    )
    proc = psutil.Process(process.pid)
    port = cluster.gcs_address.rsplit(":", 1)[1]
    cmd = [
        f"--gcs_server_port={port}" if a.startswith("--gcs_server_port=") else a
        for a in proc.cmdline()
    ]
    env = proc.environ()
    proc.kill()
    proc.wait(10)
    marks["down"] = time.monotonic()
    time.sleep(seconds)
    marks["process"] = cluster._restarted_gcs = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marks["up"] = time.monotonic()


def run_through_outage(
    cluster, run, seconds: float = 15.0, after: float = 4.0
) -> tuple[float, dict]:
    """Run ``run(marks)`` while the GCS goes away ``after`` s in for ``seconds``; its wall
    time."""
    marks: dict = {}
    killer = threading.Thread(target=gcs_outage, args=(cluster, after, seconds, marks))
    start = time.monotonic()
    killer.start()
    run(marks)
    elapsed = time.monotonic() - start
    killer.join()
    return elapsed, marks
