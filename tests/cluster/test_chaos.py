"""ray_ft.tools.chaos on a real multi-node cluster: the agent on each node signals processes."""

from __future__ import annotations

import time

import psutil
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft.tools import chaos
from tests.raytools import raylet_pid, wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


@ray.remote(max_retries=0)
def sleeper(seconds):
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


def test_kill_random_worker_kills_a_running_task(cluster):
    ref = sleeper.remote(30)
    wait_for(
        lambda: any("sleeper" in " ".join(p.cmdline()) for p in psutil.process_iter() if _safe(p)),
        timeout=60,
    )
    event = chaos.kill_random_worker(name_part="sleeper", seed=1)
    assert event.action == "kill_worker" and len(event.pids) == 1 and event.node_id
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(ref, timeout=60)


def test_no_worker_running_is_reported_not_raised(cluster):
    event = chaos.kill_random_worker(name_part="no-such-task")
    assert event.node_id is None and event.pids == ()


def test_freeze_node_stops_then_resumes_its_processes(cluster):
    node = next(iter(cluster.worker_nodes))
    event = chaos.freeze_node(node.node_id, 2.0)
    raylet = psutil.Process(event.pids[0])
    wait_for(lambda: raylet.status() == psutil.STATUS_STOPPED, timeout=10, interval=0.05)
    wait_for(lambda: raylet.status() != psutil.STATUS_STOPPED, timeout=30, interval=0.1)
    assert len(event.pids) >= 2  # the raylet and at least the agent under it


@ray.remote(num_cpus=0)
def crunch(n: int) -> float:
    """Wall seconds of a fixed amount of CPU work."""
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def test_slow_node_slows_its_workers_and_ends_by_itself(cluster):
    node = next(iter(cluster.worker_nodes)).node_id
    pinned = crunch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    ray.get(pinned.remote(10))  # a warm worker
    normal = min(ray.get(pinned.remote(2_000_000)) for _ in range(2))
    event = chaos.slow_node(node, factor=5, duration=4.0)
    assert event.action == "slow_node" and event.node_id == node
    slowed = ray.get(pinned.remote(2_000_000), timeout=60)
    assert slowed >= 2.5 * normal, (slowed, normal)
    helper = psutil.Process(event.pids[0])
    wait_for(lambda: not helper.is_running() or helper.status() == "zombie", timeout=30)
    again = ray.get(pinned.remote(2_000_000), timeout=60)
    assert again < slowed, (again, slowed)
    for bad in ({"factor": 1}, {"factor": "5"}, {"duration": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            chaos.slow_node(node, **{"factor": 5, "duration": 1.0, **bad})


def test_head_node_is_refused(cluster):
    with pytest.raises(ValueError, match="refusing to kill the head node"):
        chaos.kill_node(cluster.head_node.node_id)


def test_chaos_monkey_is_bounded(cluster):
    refs = [sleeper.remote(20) for _ in range(3)]
    time.sleep(2)
    monkey = chaos.ChaosMonkey(
        interval_s=0.3,
        actions=("kill_worker",),
        seed=3,
        max_events=2,
        max_duration_s=60,
        name_part="sleeper",
    )
    monkey.start()
    monkey._thread.join(timeout=60)
    events = monkey.stop()
    assert len(events) == 2 and all(e.action == "kill_worker" for e in events)
    ray.cancel(refs[0], force=True)
    with pytest.raises(ValueError, match="actions"):
        chaos.ChaosMonkey(actions=("meteor",))


def test_kill_node_kills_it(cluster):
    """The node's raylet and every process under it die at once (Ray's own table lists
    the node dead ~15 s later, through its health checks: not waited for here)."""
    node = next(iter(cluster.worker_nodes))
    event = chaos.kill_node(node.node_id)
    assert event.action == "kill_node" and event.pids[0] == raylet_pid(node)
    assert len(event.pids) > 1  # the raylet and the processes under it (this agent too)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not reaped
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in event.pids), timeout=30, interval=0.1)
    assert not node.remaining_processes_alive()


def _safe(proc):
    try:
        proc.cmdline()
    except psutil.Error:
        return False
    return True
