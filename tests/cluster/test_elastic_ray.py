"""Preemption notices and a GCS outage on one real local cluster of four nodes.

A busy node is drained with a 3 s deadline (``DRAIN_NODE_REASON_PREEMPTION``, as a spot
notice) and removed at the deadline. ray_ft stops placing there at once and starts a copy
of the attempt that would outlive the deadline on the free node, so the job ends sooner
than under plain Ray (which reruns the task after the kill); the kill charges no retry and
no breaker. A node killed without notice still charges as before. Last, the RocksDB-backed
GCS is killed and started again on its port 15 s later, as a supervisor would: nothing
that does not need the GCS stalls; and once more 2 s after a new manager was asked for
(cold start): no node is blamed for what the outage hid.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import ray

from ray_ft import FaultTolerantActorPool, FaultTolerantExecutor, raycompat
from ray_ft.actors.manager_actor import ensure_manager, get_manager
from tests.elastic_tools import (
    busy_worker,
    drain_deadline,
    gcs_outage,
    persistent_cluster,
    preempt_one,
    restore,
    rocksdb_gcs,
    run_through_outage,
)
from tests.raytools import QUICK_DEATH, kill_manager, wait_for, wait_for_probes

pytestmark = pytest.mark.cluster

CONFIG = {"max_retries": 3, "retry_delay": 0.1, "jitter": "none"}


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
def four(tmp_path_factory):
    """Four one-CPU nodes; the GCS keeps its tables in RocksDB (the outage test restarts it).
    Ray's health checks as in every test cluster (QUICK_DEATH)."""
    with persistent_cluster(str(tmp_path_factory.mktemp("gcs")), 4, QUICK_DEATH) as cluster:
        yield cluster


def test_a_preempted_node_costs_no_retry_and_its_work_moves_at_the_notice(four, tmp_path):
    restore(four)
    plain = ray.remote(burn)
    ray.get([plain.remote(i, 0.5) for i in range(4)])  # warm workers on every node
    info: dict = {}
    where = tmp_path / "plain"
    where.mkdir()
    drainer = threading.Thread(target=preempt_one, args=(four, 1.0, 3.0, info, str(where)))
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

    restore(four)
    manager = get_manager(CONFIG)
    with FaultTolerantExecutor(CONFIG) as ex:
        list(ex.map(burn, range(4), [0.5] * 4))  # warm, and learn the pace
        info = {}
        where = tmp_path / "ft"
        where.mkdir()
        drainer = threading.Thread(target=preempt_one, args=(four, 1.0, 3.0, info, str(where)))
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


def test_a_notice_in_the_first_second_of_a_cold_job_moves_its_work_too(four, tmp_path):
    # no manager yet: the executor reads the drain list itself until its new manager has
    # (a notice one second into the job came before the manager was up and cost a retry)
    restore(four)
    kill_manager()
    ray.get([ray.remote(burn).remote(i, 0.5) for i in range(4)])  # Ray's workers, not ours
    info: dict = {}
    drainer = threading.Thread(target=preempt_one, args=(four, 1.0, 3.0, info, str(tmp_path)))
    with FaultTolerantExecutor(CONFIG) as ex:
        drainer.start()
        results = list(ex.map(burn, range(3), [8.0] * 3, [str(tmp_path)] * 3, timeout=120))
        drainer.join()
        stats = ex.stats()
    assert [i for i, _ in results] == [0, 1, 2]
    assert info["victim"] not in {node for _, node in results}
    assert stats["retries"] == 0 and stats["preemption_copies"] >= 1, stats
    assert stats["excluded_nodes"] == []
    kill_manager()


def test_a_node_killed_without_notice_still_charges(four, tmp_path):
    restore(four)
    with FaultTolerantExecutor(CONFIG) as ex:
        list(ex.map(burn, range(4), [0.5] * 4))
        futures = [ex.submit(burn, i, 4.0, str(tmp_path)) for i in range(3)]
        victim = busy_worker(four, str(tmp_path))
        four.remove_node(victim, allow_graceful=False)
        assert sorted(f.result(timeout=120)[0] for f in futures) == [0, 1, 2]
        stats = ex.stats()
    assert stats["preempted"] == 0
    charged = stats["retries"] + stats["abandoned"]
    assert charged >= 1 and "preempted" not in stats["failures_by_type"], stats
    kill_manager()


class Worker:
    """A stateful evaluator (the pool's actors)."""

    def where(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def work(self, i: int, seconds: float) -> tuple[int, str]:
        return burn(i, seconds)


def test_the_pool_replaces_an_actor_on_a_draining_node_before_its_deadline(four):
    restore(four)
    with FaultTolerantActorPool(Worker, size=3, config=CONFIG, num_cpus=1) as pool:
        wait_for(lambda: pool.stats()["live"] == 3, timeout=60)
        # past the manager's start-up (its probes start probe_start_delay after it): on
        # two cores their processes would compete with the replacement actor's start
        wait_for_probes(pool.manager, four)
        with pool._workers.lock:
            placed = {a.node_id for a in pool._workers.actors.values()}
        victim = next(n for n in four.worker_nodes if n.node_id in placed)
        running = [pool.submit("work", i, 6.0) for i in range(2)]  # keeps the loop busy
        raycompat.drain_node(four.gcs_address, victim.node_id, "preemption", 8.0)
        deadline = drain_deadline(victim.node_id)

        def replaced():
            with pool._workers.lock:
                nodes = {
                    a.node_id for a in pool._workers.actors.values() if a.node_id and not a.dead
                }
            return len(nodes - {victim.node_id}) >= 3

        wait_for(replaced, timeout=max(1.0, deadline - time.time() - 1.0), interval=0.1)
        assert time.time() < deadline
        four.remove_node(victim, allow_graceful=False)
        assert sorted(f.result(timeout=120)[0] for f in running) == [0, 1]
        later = [pool.submit("work", i, 0.2) for i in range(6)]
        assert {f.result(timeout=120)[1] for f in later}.isdisjoint({victim.node_id})
        stats = pool.stats()
    assert stats["live"] >= 3 and stats["retries"] == 0  # the drained one may not be seen gone yet
    kill_manager()


needs_rocksdb = pytest.mark.skipif(
    not rocksdb_gcs(), reason="this Ray's GCS cannot keep its tables in RocksDB (2.60 can)"
)


@needs_rocksdb
def test_a_gcs_outage_stalls_nothing_and_fails_no_node(four):
    """Last in the module: the GCS is killed and started again on its port."""
    restore(four)
    calls = 24  # 2 s each on 4 one-CPU nodes: 12 s of work at least, through a 15 s outage
    manager = get_manager(CONFIG)
    # the manager restores this session's state: earlier tests' failures are on record
    before = ray.get(manager.status.remote())["failure_counts"]
    with FaultTolerantExecutor(CONFIG) as ex:
        list(ex.map(burn, range(8), [0.2] * 8))
        submitted_in_outage: list[float] = []

        def ft_run(marks):
            begun = time.monotonic()
            futures = [ex.submit(burn, i, 2.0) for i in range(calls)]
            while "down" not in marks:
                time.sleep(0.05)
                assert time.monotonic() - begun < 60, "the GCS was never killed"
            time.sleep(2.0)  # well inside the outage
            start = time.monotonic()
            futures.append(ex.submit(burn, calls, 0.1))
            submitted_in_outage.append(time.monotonic() - start)
            assert sorted(f.result(timeout=300)[0] for f in futures) == list(range(calls + 1))

        ft_s, _ = run_through_outage(four, ft_run)
        stats = ex.stats()
    assert submitted_in_outage[0] < 1.0, submitted_in_outage
    assert stats["succeeded"] == 8 + calls + 1 and stats["failed"] == 0
    assert stats["excluded_nodes"] == [] and stats["retries"] == 0
    # no stall: the work, the outage, and a few seconds to follow the GCS back at most (plain
    # Ray on the same work and outage is in bench/RESULTS.md, figure 19)
    assert ft_s < 4.0 + 15.0 + 12.0 + 10.0, ft_s
    status = ray.get(manager.status.remote(), timeout=60)
    assert status["excluded"] == []
    # the outage is read as no node's failure (nodes removed by earlier tests read "dead")
    assert all(n["status"] in ("alive", "dead") for n in status["nodes"].values()), status
    assert status["failure_counts"] == before
    kill_manager()


@needs_rocksdb
def test_a_gcs_outage_while_the_manager_starts_blames_no_node(four, tmp_path):
    """Cold start: no manager yet; the GCS is killed 2 s after the executor is made (the
    manager and its probes are starting) and started again 15 s later."""
    restore(four)
    kill_manager()
    calls = 24
    marks: dict = {}
    killer = threading.Thread(target=gcs_outage, args=(four, 2.0, 15.0, marks))
    manager, existed = ensure_manager(CONFIG, state_dir=str(tmp_path))
    assert not existed
    # made by this process a moment ago: still starting, so an executor made now does the
    # manager's chores itself (the cold watch) instead of waiting for its first answer
    assert ensure_manager(CONFIG)[1] is False
    with FaultTolerantExecutor(CONFIG, manager=manager) as ex:
        killer.start()
        futures = [ex.submit(burn, i, 2.0) for i in range(calls)]
        assert sorted(f.result(timeout=300)[0] for f in futures) == list(range(calls))
        killer.join()
        stats = ex.stats()
    assert "up" in marks, "the GCS was never restarted"
    assert stats["succeeded"] == calls and stats["failed"] == 0 and stats["retries"] == 0
    assert stats["excluded_nodes"] == []
    # the manager follows the GCS back, then judges: every node heard from, none failed
    wait_for(lambda: _all_probes_answered(manager), timeout=120)
    status = ray.get(manager.status.remote(), timeout=60)
    assert status["excluded"] == [] and status["failures_total"] == 0, status
    assert all(n["status"] in ("alive", "dead") for n in status["nodes"].values()), status
    kill_manager()


def _all_probes_answered(manager) -> bool:
    nodes = ray.get(manager.status.remote(), timeout=30)["nodes"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    return all(nodes.get(n, {}).get("latency_ms") is not None for n in alive)
