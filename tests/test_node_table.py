"""NodeTable and its policies: indexes stay bounded and right under repeated events."""

from __future__ import annotations

import concurrent.futures as cf

from ray_ft.config import FTConfig
from ray_ft.core.memory import MemoryPolicy
from ray_ft.core.nodes import NodeTable
from ray_ft.core.work import CallSpec, Work


def work(kind="f", **options):
    spec = CallSpec.of(options, None)
    return Work("t", "f", None, b"", (), {}, spec, cf.Future(), kind=kind)


def test_an_unchanged_pace_keeps_the_fastest_heap_bounded(clock):
    table = NodeTable(clock, queue_depth=4)
    table.set_nodes({f"n{i}": {"CPU": 4.0} for i in range(3)})
    w = work()
    assert table.fastest(w.shape, w.kind) == float("inf")  # builds the index
    for _ in range(10_000):  # a fake clock (or a steady node) gives the same runtime
        table.set_pace("n0", "f", 1.0, clock())
    index = table._placement(w.shape, w.kind)
    assert len(index.fast) <= 4 * 3 + 64
    assert table.fastest(w.shape, w.kind) == 1.0
    table.set_pace("n1", "f", 0.5, clock())
    assert table.fastest(w.shape, w.kind) == 0.5


def test_leases_and_paces_leave_with_their_node(clock):
    table = NodeTable(clock, queue_depth=4)
    table.set_nodes({"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})
    table.leases["a"] += 1
    table.learn("a", "f", clock() - 2.0, False, clock())
    table.set_nodes({"b": {"CPU": 1.0}})
    assert "a" not in table.leases and ("a", "f") not in table.runtime


def test_memory_policy_remembers_a_bounded_number_of_callables(clock):
    table = NodeTable(clock, queue_depth=4)
    table.set_nodes({"a": {"CPU": 4.0, "memory": 64e9}})
    policy = MemoryPolicy(FTConfig(), table)
    for i in range(1000):
        w = work(kind=f"f{i}", memory=1e9)
        assert float(policy.more_memory(w, "a").options["memory"]) > 1e9
    assert len(policy.raised()) <= 256
    fresh = work(kind="f999", memory=1e9)
    assert policy.feed(fresh) and float(fresh.spec.options["memory"]) > 1e9


def test_trial_leases_ask_once_admit_the_breakers_limit_and_leave_with_their_node(clock):
    from ray_ft.core.trials import TrialLeases

    table = NodeTable(clock, queue_depth=4)
    table.set_nodes({"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})
    trials = TrialLeases(table, max_calls=1)
    assert trials.to_ask([("a", 1), ("b", 0), ("gone", 1)]) == ["a"]
    assert trials.to_ask([("a", 1)]) == []  # asked already, no answer yet
    trials.answered("a", True)
    assert trials.to_ask([("a", 1)]) == []  # one lease held: the breaker's limit
    trials.use("a")
    assert dict(table.leases) == {} and trials.running["a"] == 1
    trials.ended("a")
    assert "a" not in trials.running  # no zero entries left behind
    trials.answered("a", True)
    trials.void_except([])  # the breaker closed: the held lease is void
    assert trials.release_all() == []
    trials.to_ask([("b", 1)])
    table.set_nodes({"a": {"CPU": 1.0}})
    trials.forget("b")
    assert trials.asked == set()
