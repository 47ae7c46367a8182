"""The thin Ray loop on a real 3-node cluster: no lock across callbacks or Ray calls, an
idle executor is collected, a slow node does not set the end of a batch."""

from __future__ import annotations

import functools
import gc
import time
import weakref
from collections import Counter

import numpy as np
import pytest
import ray

from ray_ft import FaultTolerantExecutor, GeneticAlgorithm, get_manager, optimize
from ray_ft.core.autoscaling import NodeType, NodeTypes
from ray_ft.core.events import NodeTypesChanged
from ray_ft.core.work import Shape
from ray_ft.runtime.cluster_link import ElasticLink
from tests.raytools import kill_manager, wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

FAST = {"retry_delay": 0.05, "max_retry_delay": 0.2, "jitter": "none"}


def pace(i: int, slow_node: str, seconds: float = 0.4, factor: float = 8.0) -> int:
    """A task that takes ``factor`` times longer on ``slow_node`` (alive, answering probes)."""
    here = ray.get_runtime_context().get_node_id()
    time.sleep(seconds * (factor if here == slow_node else 1.0))
    return i


def test_slow_node_does_not_set_the_end(cluster):
    slow = next(iter(cluster.worker_nodes)).node_id
    plain = ray.remote(pace)
    ray.get([plain.remote(i, slow, 0.01) for i in range(6)])  # warm workers everywhere
    start = time.monotonic()
    assert ray.get([plain.remote(i, slow) for i in range(24)]) == list(range(24))
    plain_s = time.monotonic() - start
    with FaultTolerantExecutor({**FAST, "speculation": True}, manager=False) as ex:
        list(ex.map(abs, range(6)))  # warm workers; the batch's pace is learned in the batch
        start = time.monotonic()
        futures = [ex.submit(pace, i, slow) for i in range(24)]
        resolved = Counter()
        for future in futures:
            future.add_done_callback(lambda f: resolved.update([id(f)]))
        assert [f.result(timeout=120) for f in futures] == list(range(24))
        ours_s = time.monotonic() - start
        stats = ex.stats()
    assert stats["retries"] == 0 and stats["failed"] == 0
    assert sorted(resolved.values()) == [1] * 24  # every future resolved once
    assert ours_s <= 0.85 * plain_s, (ours_s, plain_s)


def test_optimize_backs_up_stragglers_and_gives_the_clean_result(cluster):
    """A generation waits for its slowest evaluation: the slow node's is backed up."""
    slow = next(iter(cluster.worker_nodes)).node_id

    def ga():
        return GeneticAlgorithm(dim=3, bounds=(-2.0, 2.0), population_size=8, seed=5)

    clean = optimize(sphere_at_pace, ga(), generations=3)
    with FaultTolerantExecutor(FAST, manager=False) as ex:  # speculation: optimize's default
        result = optimize(
            functools.partial(sphere_at_pace, slow_node=slow), ga(), generations=3, executor=ex
        )
        stats = ex.stats()
    assert result.history == clean.history
    assert result.best.genome.tobytes() == clean.best.genome.tobytes()
    assert stats["speculated"] >= 1 and stats["speculation_wins"] >= 1, stats
    assert stats["retries"] == 0 and stats["failed"] == 0


def sphere_at_pace(genome, slow_node: str = "") -> float:
    """A 0.3 s evaluation, 8x slower on ``slow_node``."""
    pace(0, slow_node, 0.3)
    return float(np.sum(np.asarray(genome) ** 2))


def test_done_callback_runs_without_the_lock_and_may_submit(cluster):
    seen: list = []
    with FaultTolerantExecutor(FAST, manager=False) as ex:

        def callback(future):
            seen.append(("locked", ex._loop.lock.locked()))
            seen.append(("more", ex.submit(abs, -future.result())))

        def bad_callback(future):
            raise RuntimeError("a user's callback bug")

        first = ex.submit(abs, -2)
        first.add_done_callback(bad_callback)
        first.add_done_callback(callback)
        assert first.result(timeout=60) == 2
        wait_for(lambda: len(seen) == 2, timeout=60)
        assert seen[0] == ("locked", False)
        assert seen[1][1].result(timeout=60) == 2
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32  # nothing broke


def test_submit_is_fast_while_the_manager_restarts(cluster, tmp_path):
    manager = get_manager(FAST, state_dir=str(tmp_path))
    with FaultTolerantExecutor(FAST, manager=manager) as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        ray.kill(manager, no_restart=False)
        slowest = 0.0
        futures = []
        for i in range(20):
            start = time.perf_counter()
            futures.append(ex.submit(abs, -i))
            slowest = max(slowest, time.perf_counter() - start)
        assert [f.result(timeout=120) for f in futures] == list(range(20))
    assert slowest < 0.05, slowest
    kill_manager()


def test_idle_executor_is_collected_and_its_thread_ends(cluster):
    ex = FaultTolerantExecutor(FAST, manager=False)
    assert ex.submit(abs, -3).result(timeout=60) == 3
    thread = ex._loop.thread
    ref = weakref.ref(ex)
    del ex
    wait_for(lambda: (gc.collect() or True) and ref() is None, timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_dropped_executor_with_work_in_flight_finishes_it(cluster):
    future = FaultTolerantExecutor(FAST, manager=False).submit(pace, 7, "none", 0.5)
    gc.collect()
    assert future.result(timeout=60) == 7


def test_idle_executor_does_not_poll(cluster):
    with FaultTolerantExecutor(FAST, manager=False) as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        time.sleep(0.3)
        calls = []
        original = ex._loop.step

        def counting():
            calls.append(time.monotonic())
            return original()

        ex._loop.step = counting  # type: ignore[method-assign]
        time.sleep(1.5)
        assert calls == []  # asleep until a submit, a timer or a deadline
        assert ex.submit(abs, -2).result(timeout=60) == 2


@ray.remote(num_cpus=0)
class SlowManager:
    """A manager whose every view takes longer than the link's send period (1 s): busy, on
    a loaded head."""

    def __init__(self, types: list) -> None:
        self.types, self.calls = types, 0

    def elastic_view(self, driver: str, demand: dict, token: int | None) -> dict | None:
        self.calls += 1
        time.sleep(1.5)
        return None if token == 1 else {"token": 1, "node_types": self.types, "draining": {}}

    def count(self) -> int:
        return self.calls


def test_a_manager_slower_than_the_send_period_is_still_heard(cluster):
    """One view call at a time: a new call that replaced the one still due dropped every
    answer of a manager slower than the period, and the executor never got the types."""
    sim = NodeTypes((NodeType("sim", (("CPU", 1.0), ("sim", 1.0)), 3),))
    manager = SlowManager.remote(sim.to_json())
    link = ElasticLink(manager)
    demand = {Shape.of({"resources": {"sim": 1}}, timed=False): 2}
    events: list = []
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        events.extend(link.step(demand))
        time.sleep(0.05)
    assert events[0] == NodeTypesChanged(sim), events
    # the first call, and the one sent as its answer was read: none while one was due
    assert ray.get(manager.count.remote()) <= 2
