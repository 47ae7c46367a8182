"""Helpers for tests on a real multi-node Ray cluster on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

#: executor settings of tests that want retries at once and exact delays
QUICK_RETRIES = {"retry_delay": 0.05, "max_retry_delay": 0.2, "jitter": "none"}
#: liveness settings of tests that break nodes: probes from the manager's start (these tests
#: wait for them anyway; the start-up delay is the do-no-harm tests' subject), a probe every
#: 0.5 s, a node failed after two missed 1 s checks, its breaker half-open again after 3 s
FAST_LIVENESS = {
    "probe_start_delay": 0.0,
    "health_check_interval": 0.5,
    "probe_timeout": 1.0,
    "probe_failure_threshold": 2,
    "breaker_timeout": 3.0,
}


#: Ray's health checks in every test cluster. A killed node's checks fail at once: it leaves
#: Ray's table after ~3 s instead of ~15 s (Ray's defaults), so restoring a node never waits
#: on Ray. A frozen node's checks time out instead: with the longer timeout it is declared
#: dead only after more than 60 s (Ray's defaults: ~30 s), so in a freeze test it is ray_ft
#: that finds the node, never Ray (measured: docs/internals.md).
QUICK_DEATH = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 20000,
}


def start_cluster(
    n_nodes: int, cpus_per_node: int = 1, system_config: dict | None = QUICK_DEATH
) -> Cluster:
    """A head plus workers, each with ``cpus_per_node`` CPUs; the driver is connected.
    ``system_config``: Ray's own settings for the whole cluster (QUICK_DEATH unless given)."""
    head_args: dict = {"num_cpus": cpus_per_node, "include_dashboard": False}
    if system_config:
        head_args["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    ray.init(address=cluster.address, namespace="ray_ft_tests")
    # connected before the workers join: Ray before 2.60 connects a driver to any raylet
    # on its host, and a test that removes "worker nodes" must not remove the driver's
    for _ in range(n_nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    return cluster


@contextlib.contextmanager
def cluster_session(n_nodes: int, cpus_per_node: int = 1) -> Iterator[Cluster]:
    """start_cluster, then always shut down Ray and the cluster."""
    cluster = start_cluster(n_nodes, cpus_per_node)
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            kill_manager()
        ray.shutdown()
        cluster.shutdown()


def kill_manager() -> None:
    """Remove the detached manager actor so the next test starts clean."""
    from ray_ft.actors.manager_actor import DEFAULT_NAME, DEFAULT_NAMESPACE

    with contextlib.suppress(ValueError):
        handle = ray.get_actor(DEFAULT_NAME, namespace=DEFAULT_NAMESPACE)
        ray.kill(handle, no_restart=True)
        wait_for(lambda: _actor_gone(DEFAULT_NAME, DEFAULT_NAMESPACE), timeout=30)


def _actor_gone(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def raylet_pid(node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def node_pids(node) -> list[int]:
    """The raylet of a node and all its descendants (workers, probe actors)."""
    root = psutil.Process(raylet_pid(node))
    return [root.pid] + [p.pid for p in root.children(recursive=True)]


def worker_pids(node, name_part: str = "") -> list[int]:
    """Ray worker processes of a node whose command line contains ``name_part``."""
    root = psutil.Process(raylet_pid(node))
    pids = []
    for proc in root.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ray::" in cmd and name_part in cmd:
            pids.append(proc.pid)
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def freeze(node) -> list[int]:
    pids = node_pids(node)
    signal_all(pids, signal.SIGSTOP)
    return pids


def thaw(pids: list[int]) -> None:
    signal_all(pids, signal.SIGCONT)


def driver_answer(script: str, *args: str, timeout: float = 180) -> object:
    """Run ``script`` as a driver of its own (``python -c script *args``) that prints its
    answer as a JSON line last; the answer (a failed driver fails the test with its stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_for(condition: Callable[[], object], timeout: float = 60, interval: float = 0.1):
    """Poll until condition() is truthy; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def free_cpus() -> float:
    return ray.available_resources().get("CPU", 0.0)


@ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
class Recorder:
    """Collects what tasks report; lives on the head node, which tests never kill."""

    def __init__(self) -> None:
        self.items: list = []
        self.running = 0
        self.max_running = 0

    def add(self, item) -> None:
        self.items.append(item)

    def enter(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def leave(self) -> None:
        self.running -= 1

    def get(self) -> list:
        return list(self.items)

    def peak(self) -> int:
        return self.max_running


def wait_for_probes(manager, cluster, timeout: float = 60) -> None:
    """Wait until the manager has heard a heartbeat from every node of the cluster (a
    steady cluster: a node lost before its probe ever answered gets a start-up grace)."""

    def every_probe_answered():
        nodes = ray.get(manager.status.remote())["nodes"]
        return all(
            nodes.get(n.node_id, {}).get("latency_ms") is not None for n in cluster.list_all_nodes()
        )

    wait_for(every_probe_answered, timeout=timeout)


def restore_nodes(cluster: Cluster, n_nodes: int = 3) -> Cluster:
    """Add 1-CPU nodes until the cluster has ``n_nodes`` again (tests remove some).

    Counts the Cluster's own list: Ray's node table lags a removed node by ~15 s.
    """
    while len(cluster.list_all_nodes()) < n_nodes:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def wait_node_table_settled(cluster: Cluster, timeout: float = 60) -> None:
    """Wait until Ray's node table lists as alive exactly the Cluster's running nodes.

    A driver started before then may be handed a removed node's raylet (Ray before 2.60
    connects a new driver to any raylet it lists on its host) and die at ``ray.init``.
    """
    running = {n.node_id for n in cluster.list_all_nodes()}
    wait_for(lambda: {n["NodeID"] for n in ray.nodes() if n["Alive"]} == running, timeout)
