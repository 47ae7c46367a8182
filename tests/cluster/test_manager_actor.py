"""The detached manager actor: one per cluster, survives its own restart, probes every node."""

from __future__ import annotations

import json
import time

import pytest
import ray

from ray_ft import FailureEvent, FailureType, get_manager, raycompat
from tests.raytools import driver_answer, wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

# one failure opens a breaker that stays open for the whole module
CONFIG = {"health_check_interval": 0.5, "probe_timeout": 2.0}
CONFIG |= {"worker_failure_threshold": 1, "breaker_timeout": 600}


CLUSTER_NODES = 2  # the shared cluster fixture (tests/conftest.py) starts two nodes


@pytest.fixture
def manager(cluster, tmp_path):
    handle = get_manager(CONFIG, state_dir=str(tmp_path))
    yield handle
    from tests.raytools import kill_manager

    kill_manager()


SECOND_DRIVER = """
import json, sys, ray
from ray_ft import get_manager
ray.init(address=sys.argv[1])
handle = get_manager()
print(json.dumps({"actor_id": handle._actor_id.hex(),
                  "counts": ray.get(handle.status.remote())["failure_counts"]}))
"""


def test_two_drivers_share_one_manager(cluster, manager):
    node = ray.nodes()[0]["NodeID"]
    ray.get(
        manager.report_failures.remote(
            [FailureEvent(1.0, FailureType.WORKER_CRASH, "x", task_id="t", worker_id=node)]
        )
    )
    answer = driver_answer(SECOND_DRIVER, cluster.address, timeout=120)
    assert answer["actor_id"] == manager._actor_id.hex()
    assert answer["counts"] == {"worker_crash": 1}


def test_state_survives_actor_restart(cluster, manager):
    node = ray.nodes()[0]["NodeID"]
    events = [
        FailureEvent(time.time(), FailureType.NODE_DIED, f"e{i}", worker_id=node) for i in range(2)
    ]
    ray.get(manager.report_failures.remote(events))
    before = ray.get(manager.status.remote())
    assert before["nodes"][node]["breaker"] == "OPEN"

    def written():  # state is written by a writer thread, at most once a second
        status = ray.get(manager.status.remote())
        return status["state_written_version"] >= before["state_version"]

    wait_for(written, timeout=30)
    pid_before = ray.get(manager.__ray_call__.remote(lambda self: __import__("os").getpid()))

    ray.kill(manager, no_restart=False)

    def restarted():
        try:
            pid = ray.get(
                manager.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=10
            )
        except Exception:
            return None
        return pid != pid_before and ray.get(manager.status.remote(), timeout=10)

    after = wait_for(restarted, timeout=120, interval=0.5)
    assert after["restored"] is True
    assert after["nodes"][node]["breaker"] == "OPEN"
    assert after["failure_counts"] == before["failure_counts"] == {"node_died": 2}
    history = ray.get(manager.get_state.remote())["history"]
    assert [e["details"] for e in history] == ["e0", "e1"]


def test_one_probe_per_alive_node(cluster, manager):
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def all_probed():
        status = ray.get(manager.status.remote())
        nodes = status["nodes"]
        return (
            alive <= nodes.keys()
            and all(nodes[n]["has_probe"] and nodes[n]["healthy"] is not None for n in alive)
            and status
        )

    status = wait_for(all_probed, timeout=90, interval=0.5)
    probes = ray.get(manager.probe_handles.remote())
    assert set(probes) == alive
    for node_id, probe in probes.items():
        assert ray.get(probe.check.remote())["node_id"] == node_id
    assert status["excluded"] == []


def test_manual_breaker_and_new_cluster_starts_clean(cluster, manager, tmp_path):
    node = ray.nodes()[0]["NodeID"]
    ray.get(manager.open_breaker.remote(node))
    assert node in ray.get(manager.excluded_nodes.remote())["excluded"]
    ray.get(manager.close_breaker.remote(node))
    assert node not in ray.get(manager.excluded_nodes.remote())["excluded"]
    # state is kept per Ray session: another session's folder is not read
    state_files = list(tmp_path.glob("*/manager_state.json"))
    assert len(state_files) == 1
    assert state_files[0].parent.name == raycompat.session_name()


def test_metrics_are_real_ray_metrics(cluster):
    from ray_ft.metrics import BREAKER_STATE_VALUES, Metrics, get_metrics

    metrics = get_metrics()
    assert isinstance(metrics, Metrics)  # not the no-op stand-in: Ray accepted them
    metrics.failure("worker_crash")
    metrics.retry()
    metrics.gave_up("task_timeout")
    metrics.success(3)
    metrics.recovered(1.5)
    metrics.node("node-a", "OPEN", False)
    assert BREAKER_STATE_VALUES == {"CLOSED": 0.0, "HALF_OPEN": 1.0, "OPEN": 2.0}


def test_reports_and_trials_for_nodes_ray_never_saw_are_refused(cluster, manager):
    ghost = "f" * 56
    event = FailureEvent(time.time(), FailureType.NODE_DIED, "x", worker_id=ghost)
    ray.get(manager.report_failures.remote([event, event]))
    assert ray.get(manager.acquire_trial.remote(ghost)) is False
    ray.get(manager.report_trial.remote(ghost, False, event))
    state = ray.get(manager.get_state.remote())
    assert ghost not in state["workers"] and ghost not in state["breakers"]
    assert state["history"] == []
    assert ray.get(manager.status.remote())["refused_reports"] == 2


def test_a_corrupt_state_file_is_moved_aside_and_the_manager_starts_fresh(cluster, tmp_path):
    from tests.raytools import kill_manager

    session = raycompat.session_name()
    state = tmp_path / session / "manager_state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"format_version": 2, "workers": {"a": ')  # cut short by a crash
    try:
        handle = get_manager(CONFIG, state_dir=str(tmp_path))
        status = ray.get(handle.status.remote(), timeout=60)
        assert status["restored"] is False
        aside = list(state.parent.glob("manager_state.json.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_text().startswith('{"format_version"')
        wait_for(lambda: state.exists() and json.loads(state.read_text()), timeout=30)
        assert json.loads(state.read_text())["format_version"] == 2  # written afresh
    finally:
        kill_manager()
