"""Real faults on a real 3-node cluster: SIGKILLed workers, removed and frozen nodes, breakers.

Every fault here is a real process being killed or stopped; nothing about Ray is mocked.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import ray

from ray_ft import FaultTolerantExecutor, get_manager
from tests.raytools import (
    FAST_LIVENESS,
    Recorder,
    freeze,
    signal_all,
    thaw,
    wait_for,
    wait_for_probes,
    worker_pids,
)

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

CONFIG = {**FAST_LIVENESS, "retry_delay": 0.1, "max_retry_delay": 0.5, "max_retries": 6}
CONFIG["worker_failure_threshold"] = 100  # user errors here are not the node's


def where(i, seconds=0.0, recorder=None):
    start = time.time()
    if recorder is not None:
        ray.get(recorder.enter.remote())
    time.sleep(seconds)
    if recorder is not None:
        ray.get(recorder.leave.remote())
    return i, ray.get_runtime_context().get_node_id(), start


def a_worker_node(cluster):
    return next(iter(cluster.worker_nodes))


def test_sigkilled_workers_every_future_once(nodes, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    resolved = []
    lock = threading.Lock()
    with FaultTolerantExecutor(CONFIG, manager=manager) as ex:
        futures = [ex.submit(where, i, 0.4) for i in range(30)]
        for f in futures:
            f.add_done_callback(lambda fut: (lock.acquire(), resolved.append(fut), lock.release()))
        kills = 0
        deadline = time.monotonic() + 30
        while kills < 4 and time.monotonic() < deadline:
            victims = [p for node in nodes.list_all_nodes() for p in worker_pids(node, "where")]
            if victims:
                signal_all(victims[:1], signal.SIGKILL)
                kills += 1
            time.sleep(0.6)
        results = [f.result(timeout=120) for f in futures]
        stats = ex.stats()
    assert kills >= 2
    assert [r[0] for r in results] == list(range(30))
    assert len(resolved) == 30 and len({id(f) for f in resolved}) == 30
    assert stats["succeeded"] == 30 and stats["failed"] == 0
    assert stats["failures_by_type"].get("worker_crash", 0) >= 2
    assert stats["retries"] >= 2


def test_open_breaker_gets_no_task(nodes, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    victim = a_worker_node(nodes).node_id
    ray.get(manager.open_breaker.remote(victim))
    with FaultTolerantExecutor(CONFIG, manager=manager) as ex:
        wait_for(lambda: victim in ex.stats()["excluded_nodes"], timeout=30)
        results = [f.result(timeout=120) for f in [ex.submit(where, i, 0.05) for i in range(30)]]
    assert {node for _, node, _ in results}.isdisjoint({victim})
    assert len({node for _, node, _ in results}) == 2


def test_removed_node_work_finishes_elsewhere(nodes, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    wait_for_probes(manager, nodes)
    victim = a_worker_node(nodes)
    with FaultTolerantExecutor(CONFIG, manager=manager) as ex:
        futures = [ex.submit(where, i, 0.5) for i in range(24)]
        wait_for(lambda: worker_pids(victim, "where"), timeout=30)
        nodes.remove_node(victim, allow_graceful=False)
        results = [f.result(timeout=180) for f in futures]
        stats = ex.stats()
    assert [r[0] for r in results] == list(range(24))
    lost = stats["failures_by_type"]
    # Ray's own errors, or attempts ray_ft reran itself once the node left Ray's table
    # Ray's own errors, attempts ray_ft reran once the node was declared failed, or pinned
    # attempts Ray could no longer schedule there (re-placed)
    rerun = sum(lost.values()) + stats["abandoned"] + stats["replaced"]
    assert rerun >= 1, stats

    def node_dead_without_probe():
        node = ray.get(manager.status.remote())["nodes"].get(victim.node_id)
        return node is not None and node["status"] == "dead" and not node["has_probe"]

    wait_for(node_dead_without_probe, timeout=90, interval=0.5)
    history = ray.get(manager.get_state.remote())["history"]
    assert any(e["worker_id"] == victim.node_id for e in history)  # on record, blamed or not


def test_degrades_to_one_node_then_uses_a_new_one(nodes, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    wait_for_probes(manager, nodes)
    recorder = Recorder.remote()
    samples = []
    with FaultTolerantExecutor(CONFIG, manager=manager, queue_depth=1) as ex:
        futures = [ex.submit(where, i, 0.3, recorder) for i in range(30)]
        time.sleep(1.0)
        removed = {node.node_id for node in nodes.worker_nodes}
        for node in list(nodes.worker_nodes):
            nodes.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + 180
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            stats = ex.stats()  # one consistent snapshot: in flight vs the nodes it uses
            usable = set(stats["nodes"]) - set(stats["excluded_nodes"])
            samples.append((stats["in_flight"], 1 if usable.isdisjoint(removed) else 3))
            time.sleep(0.2)
        results = [f.result(timeout=10) for f in futures]
        assert [r[0] for r in results] == list(range(30))
        assert ray.get(recorder.peak.remote()) <= 3
        settled = [inflight for inflight, alive in samples if alive == 1]
        assert settled and max(settled) <= 1, samples

        new = nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()

        def probed():
            node = ray.get(manager.status.remote())["nodes"].get(new.node_id)
            return node is not None and node["has_probe"] and node["healthy"] is not None

        wait_for(probed, timeout=90, interval=0.5)
        time.sleep(1.5)  # the executor refreshes its node list every second
        more = [f.result(timeout=120) for f in [ex.submit(where, i, 0.3) for i in range(8)]]
    assert new.node_id in {node for _, node, _ in more}


def test_frozen_node_rerun_elsewhere_then_trial_closes_breaker(nodes, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    victim = a_worker_node(nodes)
    wait_for(
        lambda: (
            ray.get(manager.status.remote())["nodes"].get(victim.node_id, {}).get("healthy")
            is not None
        ),
        timeout=60,
    )
    with FaultTolerantExecutor(CONFIG, manager=manager) as ex:
        futures = [ex.submit(where, i, 0.5) for i in range(12)]
        wait_for(lambda: worker_pids(victim, "where"), timeout=30)
        frozen_at = time.time()
        pids = freeze(victim)
        try:
            results = [f.result(timeout=60) for f in futures]
            finished_at = time.time()
            verdict = ray.get(manager.status.remote())["nodes"][victim.node_id]
        finally:
            thaw(pids)
        stats = ex.stats()
        assert [r[0] for r in results] == list(range(12))
        assert verdict["status"] == "failed" and verdict["breaker"] == "OPEN"
        # the heartbeat detector or the missed health checks, whichever saw it first
        assert any("stopped answering" in r or "missed" in r for r in verdict["reasons"])
        assert all(start < frozen_at for _, node, start in results if node == victim.node_id)
        assert stats["abandoned"] >= 1
        assert finished_at - frozen_at < 30

        def breaker_is(state):
            return ray.get(manager.status.remote())["nodes"][victim.node_id]["breaker"] == state

        wait_for(lambda: breaker_is("HALF_OPEN"), timeout=60, interval=0.2)
        wait_for(lambda: victim.node_id not in ex.stats()["excluded_nodes"], timeout=30)
        deadline = time.monotonic() + 60
        ran_there = False
        while not ran_there and time.monotonic() < deadline:
            batch = [f.result(timeout=60) for f in [ex.submit(where, i, 0.1) for i in range(6)]]
            ran_there = victim.node_id in {node for _, node, _ in batch}
        assert ran_there, "the trial task should have run on the thawed node"
        wait_for(lambda: breaker_is("CLOSED"), timeout=30, interval=0.2)
