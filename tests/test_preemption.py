"""Preemption notices on a real local cluster: a busy node is drained with a 3 s deadline
(``DRAIN_NODE_REASON_PREEMPTION``, as a spot notice) and removed at the deadline.

ray_ft stops placing there at once and starts a copy of the attempt that would outlive the
deadline on the free node, so the job ends sooner than under plain Ray (which reruns the
task after the kill); the kill charges no retry and no breaker. A node killed without
notice still charges as before.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import ray
from ray.core.generated import autoscaler_pb2

from ray_ft import FaultTolerantExecutor
from ray_ft.actors.manager_actor import get_manager
from tests.raytools import cluster_session, kill_manager, wait_for

pytestmark = pytest.mark.cluster

CONFIG = {"max_retries": 3, "retry_delay": 0.1, "jitter": "none"}
PREEMPTION = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")


def burn(i: int, seconds: float = 8.0, where: str | None = None) -> tuple[int, str]:
    """CPU-bound for ``seconds``; its node is written to ``where/i`` as it starts."""
    node = ray.get_runtime_context().get_node_id()
    if where is not None:
        with open(os.path.join(where, f"{i}.{os.getpid()}"), "w") as f:
            f.write(node)
    start, x = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        x += 1
    return i, ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def four():
    with cluster_session(4) as cluster:
        yield cluster


def _busy_worker(cluster, where: str):
    """A worker node (not the head) on which a call has started."""

    def find():
        started = set()
        for name in os.listdir(where):
            with open(os.path.join(where, name)) as f:
                started.add(f.read())
        busy = [n for n in cluster.worker_nodes if n.node_id in started]
        return busy[0] if busy else None

    return wait_for(find, timeout=30, interval=0.05)


def _preempt_one(cluster, after: float, deadline_s: float, out: dict, where: str) -> None:
    """``after`` seconds in, drain a busy worker (deadline ``deadline_s``); remove it then."""
    time.sleep(after)
    victim = _busy_worker(cluster, where)
    deadline = time.time() + deadline_s
    gcs = ray._raylet.GcsClient(address=cluster.gcs_address)
    accepted, why = gcs.drain_node(victim.node_id, PREEMPTION, "spot notice", int(deadline * 1000))
    assert accepted, why
    out["victim"] = victim.node_id
    time.sleep(max(0.0, deadline - time.time()))
    cluster.remove_node(victim, allow_graceful=False)


def _restore(cluster, n_nodes: int = 4) -> None:
    while len(cluster.list_all_nodes()) < n_nodes:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"]) == n_nodes, timeout=60)


def test_a_preempted_node_costs_no_retry_and_its_work_moves_at_the_notice(four, tmp_path):
    _restore(four)
    plain = ray.remote(burn)
    ray.get([plain.remote(i, 0.5) for i in range(4)])  # warm workers on every node
    info: dict = {}
    where = tmp_path / "plain"
    where.mkdir()
    drainer = threading.Thread(target=_preempt_one, args=(four, 1.0, 3.0, info, str(where)))
    start = time.monotonic()
    drainer.start()
    refs = [plain.remote(i, 8.0, str(where)) for i in range(3)]
    assert sorted(i for i, _ in ray.get(refs, timeout=120)) == [
        0,
        1,
        2,
    ]
    plain_s = time.monotonic() - start
    drainer.join()

    _restore(four)
    manager = get_manager(CONFIG)
    with FaultTolerantExecutor(CONFIG) as ex:
        list(ex.map(burn, range(4), [0.5] * 4))  # warm, and learn the pace
        info = {}
        where = tmp_path / "ft"
        where.mkdir()
        drainer = threading.Thread(target=_preempt_one, args=(four, 1.0, 3.0, info, str(where)))
        start = time.monotonic()
        drainer.start()
        results = list(ex.map(burn, range(3), [8.0] * 3, [str(where)] * 3, timeout=120))
        ft_s = time.monotonic() - start
        drainer.join()
        stats = ex.stats()
    victim = info["victim"]
    assert [i for i, _ in results] == [0, 1, 2]
    assert victim not in {node for _, node in results}
    assert stats["retries"] == 0 and stats["preemption_copies"] >= 1
    assert set(stats["failures_by_type"]) <= {"preempted"}
    assert stats["excluded_nodes"] == []
    assert ft_s < plain_s, (ft_s, plain_s)
    status = wait_for(
        lambda: (
            (s := ray.get(manager.status.remote()))["nodes"].get(victim, {}).get("drain")
            == "drained"
            and s
        ),
        timeout=30,
    )
    node = status["nodes"][victim]
    assert node["breaker"] == "CLOSED" and victim not in status["excluded"]
    assert node["severity"] == "ok"
    kill_manager()


def test_a_node_killed_without_notice_still_charges(four, tmp_path):
    _restore(four)
    with FaultTolerantExecutor(CONFIG) as ex:
        list(ex.map(burn, range(4), [0.5] * 4))
        futures = [ex.submit(burn, i, 6.0, str(tmp_path)) for i in range(3)]
        victim = _busy_worker(four, str(tmp_path))
        four.remove_node(victim, allow_graceful=False)
        assert sorted(f.result(timeout=120)[0] for f in futures) == [0, 1, 2]
        stats = ex.stats()
    assert stats["preempted"] == 0
    charged = stats["retries"] + stats["abandoned"]
    assert charged >= 1 and "preempted" not in stats["failures_by_type"], stats
    kill_manager()
