"""FaultTolerantActorPool on a real 3-node cluster: SIGKILLed actors, a removed node, an
optimization that gives the bit-identical result, and clear errors for bad input."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from ray_ft import FaultTolerantActorPool, GeneticAlgorithm, optimize
from tests.raytools import wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

FAST = {"retry_delay": 0.05, "max_retry_delay": 0.2, "jitter": "none", "max_retries": 5}


class Simulator:
    """Expensive set-up once (a model, a licence), then cheap evaluations."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.table = np.linspace(0.0, 1.0, 1000)  # stands in for a loaded model

    def evaluate(self, genome) -> float:
        time.sleep(0.05)
        x = np.asarray(genome, dtype=np.float64)
        return float(self.scale * np.sum(x**2))

    def whoami(self, i: int, seconds: float = 0.2) -> tuple[int, int]:
        time.sleep(seconds)
        return i, os.getpid()


class Broken:
    def __init__(self) -> None:
        raise ValueError("no licence for this simulator")

    def run(self) -> int:
        return 1


def test_calls_go_to_live_actors_and_results_keep_their_order(nodes):
    with FaultTolerantActorPool(
        Simulator, size=3, config=FAST, manager=False, num_cpus=0.5
    ) as pool:
        results = list(pool.map(Simulator.evaluate, [[i, 0.0] for i in range(12)]))
        assert results == [float(i * i) for i in range(12)]
        assert pool.submit("whoami", 1, 0.0).result(timeout=60)[0] == 1
        stats = pool.stats()
    assert (stats["size"], stats["live"], stats["replaced"]) == (3, 3, 0)


def test_a_pool_map_never_advanced_still_runs_its_calls(nodes):
    """As the executor's (and the stdlib's): ``pool.map(...)`` alone fires the work."""
    pool = FaultTolerantActorPool(Simulator, size=2, config=FAST, manager=False, num_cpus=0.5)
    pool.map(Simulator.whoami, range(6), [0.1] * 6)  # the iterator is dropped at once
    pool.shutdown(wait=True)
    stats = pool.stats()
    assert stats["succeeded"] == 6 and stats["cancelled"] == 0, stats


def test_sigkilled_actor_is_replaced_and_never_used_again(nodes):
    with FaultTolerantActorPool(
        Simulator, size=3, config=FAST, manager=False, num_cpus=0.5
    ) as pool:
        futures = [pool.submit(Simulator.whoami, i) for i in range(30)]
        first = futures[0].result(timeout=60)
        victim = first[1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        results = [f.result(timeout=120) for f in futures]
        assert [i for i, _ in results] == list(range(30))
        wait_for(lambda: pool.stats()["replaced"] >= 1, timeout=60)
        later = [pool.submit(Simulator.whoami, i, 0.0).result(timeout=60) for i in range(9)]
        stats = pool.stats()
    assert victim not in {pid for _, pid in later}
    assert stats["live"] == 3 and stats["failed"] == 0
    assert time.monotonic() - killed_at < 120


def test_removed_node_degrades_the_pool_and_a_new_node_restores_it(nodes):
    # one actor per node (1 CPU each): losing a node leaves room for two actors only
    with FaultTolerantActorPool(Simulator, size=3, config=FAST, manager=False, num_cpus=1) as pool:
        list(pool.map(Simulator.whoami, range(6), [0.0] * 6))
        victim = next(iter(nodes.worker_nodes))
        futures = [pool.submit(Simulator.whoami, i) for i in range(24)]
        nodes.remove_node(victim, allow_graceful=False)
        results = [f.result(timeout=180) for f in futures]
        assert [i for i, _ in results] == list(range(24))
        # graceful degradation: fewer actors, no failure (without a manager the pool learns
        # of the node's death from Ray's node table, about 15 s later)
        wait_for(lambda: pool.stats()["live"] == 2, timeout=90)
        assert victim.node_id not in {a.node_id for a in pool._workers.actors.values()}
        nodes.add_node(num_cpus=1)
        wait_for(lambda: pool.stats()["live"] == 3, timeout=120)
        assert pool.stats()["replaced"] >= 1
        assert [i for i, _ in pool.map(Simulator.whoami, range(6), [0.0] * 6)] == list(range(6))


def test_optimize_with_actor_kills_is_bit_identical_to_a_local_run(nodes):
    def ga():
        return GeneticAlgorithm(dim=4, bounds=(-2.0, 2.0), population_size=8, seed=11)

    local = optimize(Simulator().evaluate, ga(), generations=5)
    with FaultTolerantActorPool(
        Simulator, size=3, config=FAST, manager=False, num_cpus=0.5
    ) as pool:
        killer_done = []

        def kill_one(report):
            if report.generation in (1, 3) and not killer_done.count(report.generation):
                killer_done.append(report.generation)
                pid = pool.submit(Simulator.whoami, -1, 0.0).result(timeout=60)[1]
                os.kill(pid, signal.SIGKILL)

        result = optimize(Simulator.evaluate, ga(), generations=5, executor=pool, progress=kill_one)
        assert killer_done == [1, 3]
        wait_for(lambda: pool.stats()["replaced"] >= 1, timeout=60)
    assert result.history == local.history
    assert result.best.genome.tobytes() == local.best.genome.tobytes()


def test_bad_input_gets_a_clear_error(nodes):
    with pytest.raises(ValueError, match="size=0 is not valid"):
        FaultTolerantActorPool(Simulator, size=0)
    import threading

    with pytest.raises(TypeError, match="cannot be pickled"):
        FaultTolerantActorPool(Simulator, size=1, args=(threading.Lock(),))
    with (
        FaultTolerantActorPool(Simulator, size=1, config=FAST, manager=False, num_cpus=0.5) as pool,
        pytest.raises(ValueError, match="not a method of Simulator; pass one of evaluate"),
    ):
        pool.submit("fly", 1)
    with FaultTolerantActorPool(Broken, size=2, config=FAST, manager=False, num_cpus=0.5) as pool:
        future = pool.submit(Broken.run)
        with pytest.raises(RuntimeError, match="constructor failed") as info:
            future.result(timeout=120)
        assert "no licence" in str(info.value.__cause__)


def test_frozen_nodes_actor_is_replaced_once_the_node_is_excluded(nodes, tmp_path):
    from ray_ft import get_manager
    from tests.raytools import freeze, kill_manager, thaw, wait_for_probes

    config = {**FAST, "health_check_interval": 0.5, "probe_timeout": 2.0, "probe_start_delay": 0.0}
    manager = get_manager(config, state_dir=str(tmp_path))
    wait_for_probes(manager, nodes)
    victim = None
    frozen: list[int] = []
    try:
        with FaultTolerantActorPool(
            Simulator, size=3, config=config, manager=manager, num_cpus=1
        ) as pool:
            # one actor per node once the earlier tests' actors have released their CPUs
            wait_for(lambda: pool.stats()["live"] == 3, timeout=120)
            hosts = {a.node_id for a in pool._workers.actors.values()}
            victim = next(n for n in nodes.worker_nodes if n.node_id in hosts)
            futures = [pool.submit(Simulator.whoami, i) for i in range(18)]
            frozen = freeze(victim)
            results = [f.result(timeout=180) for f in futures]
            assert [i for i, _ in results] == list(range(18))
            stats = pool.stats()
            assert stats["abandoned"] >= 1 and stats["failed"] == 0
            assert victim.node_id not in {a.node_id for a in pool._workers.actors.values()}
    finally:
        thaw(frozen)
        if victim is not None:
            nodes.remove_node(victim)  # clean-up, graceful: Ray lists it dead at once
        kill_manager()
