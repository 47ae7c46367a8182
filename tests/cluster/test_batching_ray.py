"""Batching on a real 3-node cluster: per-member results and exceptions, a poison member
whose worker exits fails alone, workers SIGKILLed under batches lose nothing."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import ray

from ray_ft import FaultTolerantExecutor, TaskFailedError, get_manager
from ray_ft.tools import chaos
from tests.raytools import wait_for_probes

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


def small(i: int) -> float:
    """A couple of milliseconds of numpy work (no sleep)."""
    x = np.random.default_rng(i).random(2_000)
    for _ in range(10):
        x = np.sqrt(x * x + 1.0) % 7.0
    return float(x[0])


def poisoned(i: int) -> float:
    if i == 40:
        os._exit(1)  # the worker process dies with the whole batch
    return small(i)


def picky(i: int) -> float:
    if i % 10 == 3:
        raise LookupError(f"no item {i}")
    return small(i)


def test_members_end_on_their_own_and_batching_can_be_turned_off(cluster):
    with FaultTolerantExecutor(manager=False) as ex:
        futures = [ex.submit(picky, i) for i in range(200)]
        for i, future in enumerate(futures):
            if i % 10 == 3:
                with pytest.raises(LookupError, match=f"no item {i}"):
                    future.result(timeout=120)
            else:
                assert future.result(timeout=120) == small(i)
        stats = ex.stats()
    assert stats["batches"] > 0 and stats["batched_calls"] > stats["batches"]
    assert stats["retries"] == 0 and stats["user_errors"] == {}
    with FaultTolerantExecutor({"batching": False}, manager=False) as ex:
        assert list(ex.map(small, range(100))) == [small(i) for i in range(100)]
        assert ex.stats()["batches"] == 0


def scaled(values, factor: int, *, offset=0) -> float:
    return float(np.sum(values) * factor + offset)


def test_object_ref_arguments_are_resolved_for_every_member(cluster):
    values = ray.put(np.arange(10.0))
    offset = ray.put(0.5)
    with FaultTolerantExecutor(manager=False) as ex:
        futures = [ex.submit(scaled, values, i, offset=offset) for i in range(300)]
        assert [f.result(timeout=120) for f in futures] == [45.0 * i + 0.5 for i in range(300)]
        assert ex.stats()["batched_calls"] > 0


def test_a_poison_member_fails_alone_and_no_node_is_excluded(cluster, tmp_path):
    # probes from the manager's start: the test waits for them before the work anyway
    config = {"max_retries": 2, "retry_delay": 0.1, "probe_start_delay": 0.0}
    manager = get_manager(config, state_dir=str(tmp_path))
    wait_for_probes(manager, cluster, timeout=60)
    with FaultTolerantExecutor(config) as ex:
        assert list(ex.map(poisoned, range(41, 71))) == [small(i) for i in range(41, 71)]
        # the case, made exact: one batch of 64 (as map(..., chunksize=64) would
        # ask), so the poison is packed with 63 good ones whatever the pace
        works = ex._queue_all(poisoned, [((i,), {}) for i in range(64)], {}, 64, raise_launch=False)
        futures = [w.future for w in works]
        for i, future in enumerate(futures):
            if i == 40:
                with pytest.raises(TaskFailedError, match="worker_crash"):
                    future.result(timeout=180)
            else:
                assert future.result(timeout=180) == small(i)
        stats = ex.stats()
    assert stats["batch_splits"] >= 1, stats  # it was packed with others, then split
    assert stats["failed"] == 1 and stats["succeeded"] == 30 + 63
    assert ray.get(manager.excluded_nodes.remote())["excluded"] == []


def test_workers_killed_under_batches_lose_nothing(cluster):
    expected = [small(i) for i in range(600)]
    monkey = chaos.ChaosMonkey(
        interval_s=1.0,
        actions=("kill_worker",),
        seed=5,
        max_events=10,
        max_duration_s=90,
        name_part="batch",
    )
    with FaultTolerantExecutor({"max_retries": 5, "retry_delay": 0.1}, manager=False) as ex:
        list(ex.map(small, range(50)))  # learn the pace: the rounds below are packed
        rounds = []
        deadline = time.monotonic() + 60  # rounds go on until a batch worker was killed
        with monkey:
            while len(rounds) < 6 or (
                not any(e.pids for e in monkey.events) and time.monotonic() < deadline
            ):
                rounds.append(list(ex.map(small, range(600))))
        stats = ex.stats()
    kills = [e for e in monkey.events if e.pids]
    assert kills, monkey.events  # batch workers really died under the executor
    assert stats["batch_splits"] >= 1 or stats["retries"] >= 1, stats
    assert all(r == expected for r in rounds)
    assert stats["failed"] == 0 and stats["batches"] > 0
    assert stats["succeeded"] == 50 + len(rounds) * 600


def block(i: int):
    """A fast call with a large result (8 MB): a batch of them must not hold them all."""
    return np.full(1_000_000, i, dtype=np.float64)


def test_large_results_keep_a_batch_within_its_memory_budget(cluster):
    with FaultTolerantExecutor(manager=False) as ex:
        results = list(ex.map(block, range(40), chunksize=40))  # one batch asked for
        stats = ex.stats()
    assert all(r[0] == i and r.shape == (1_000_000,) for i, r in enumerate(results))
    assert stats["failed"] == 0 and stats["retries"] == 0
    # 64 MB per batch: after 9 results of 8 MB the rest went back, uncharged
    assert stats["batch_unrun"] >= 40 - 9, stats
