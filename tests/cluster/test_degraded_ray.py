"""Degraded is a preference, not an exclusion, on a real 3-node cluster (1 CPU each).

Every node's disk stands above ``disk_threshold`` (1 %: any disk is fuller than that), so
the real probes judge every node degraded, as a memory-heavy job or a shared image at 96 %
would: the job still runs on every node, about as fast as plain Ray. With one degraded
node of three (the verdict handed to a local manager, which has no probes of its own),
that node takes work only while the other two are full.
"""

from __future__ import annotations

import glob
import os
import time

import pytest
import ray

from ray_ft import FaultTolerantExecutor, get_manager
from tests.raytools import wait_for, wait_for_probes

pytestmark = pytest.mark.cluster

ALL_DEGRADED = {"disk_threshold": 1.0, "health_check_interval": 0.5, "probe_start_delay": 0.0}


def busy_where(seconds: float) -> str:
    """Hold one core for ``seconds``; return the node it ran on."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return ray.get_runtime_context().get_node_id()


def _plain_ray_seconds(calls: int, seconds: float) -> float:
    task = ray.remote(max_retries=0)(busy_where)
    start = time.monotonic()
    ray.get([task.remote(seconds) for _ in range(calls)])
    return time.monotonic() - start


def _warnings_in_logs(text: str) -> int:
    logs = ray._private.worker._global_node.get_logs_dir_path()
    count = 0
    for path in glob.glob(os.path.join(logs, "worker-*.err")):
        with open(path, errors="replace") as f:
            count += f.read().count(text)
    return count


def test_a_cluster_whose_nodes_are_all_degraded_still_runs_its_work(nodes, tmp_path):
    manager = get_manager(ALL_DEGRADED, state_dir=str(tmp_path))
    wait_for_probes(manager, nodes)
    wait_for(lambda: len(ray.get(manager.status.remote())["degraded"]) == 3, timeout=60)
    _plain_ray_seconds(6, 0.05)  # start the workers first: both runs find them warm
    plain = _plain_ray_seconds(30, 0.2)
    with FaultTolerantExecutor(ALL_DEGRADED, manager=manager) as ex:
        wait_for(lambda: len(ex.stats()["degraded_nodes"]) == 3, timeout=30)
        start = time.monotonic()
        where = list(ex.map(busy_where, [0.2] * 30, timeout=120))
        took = time.monotonic() - start
        stats = ex.stats()
    print(f"all degraded: ray_ft {took:.2f} s, plain Ray {plain:.2f} s ({took / plain:.2f}x)")
    assert len(where) == 30 and len(set(where)) == 3  # every node used
    assert took <= 2 * plain + 1.0, (took, plain)  # plain Ray: ~3 s on this machine
    assert stats["excluded_nodes"] == [] and len(stats["degraded_nodes"]) == 3
    status = ray.get(manager.status.remote())
    assert status["excluded"] == []
    assert status["mass_degraded"].startswith("disk above 1% on 3 of 3 nodes")
    wait_for(lambda: _warnings_in_logs("most nodes are degraded at once") >= 1, timeout=30)
    assert _warnings_in_logs("most nodes are degraded at once") == 1  # said once


def test_one_degraded_node_takes_work_only_when_the_others_are_full(nodes):
    config = {"batching": False, "retry_delay": 0.1}
    with FaultTolerantExecutor(config, manager=False) as ex:
        node_ids = sorted(ex.stats()["nodes"])
        degraded = node_ids[0]
        ex._loop.client.manager.update_health(degraded, "degraded", ["memory at 97% exceeds 95%"])
        wait_for(lambda: ex.stats()["degraded_nodes"] == [degraded], timeout=30)
        # two calls at a time: the two ok nodes take them, the degraded node stays idle
        for _ in range(3):
            pair = [ex.submit(busy_where, 0.3) for _ in range(2)]
            assert degraded not in {f.result(timeout=60) for f in pair}
        # three at a time: the ok nodes are full, the degraded one takes the third
        trio = [ex.submit(busy_where, 1.0) for _ in range(3)]
        assert sorted(f.result(timeout=60) for f in trio) == node_ids
        assert ex.stats()["excluded_nodes"] == []
