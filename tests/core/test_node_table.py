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
    assert "a" not in table.leases and ("a", "f") not in table.paces.runtime


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


def test_node_churn_keeps_every_index_bounded_by_the_live_nodes(clock):
    """A spot cluster replaces its nodes all day: after 40 generations of 200 new nodes,
    every index holds a small multiple of the 200 live ones (the memory heap took an
    entry per node that ever joined, read only on an out-of-memory retry)."""
    table = NodeTable(clock, queue_depth=4)
    w, oom = work(), work(memory=2e9)
    nodes = 200
    for generation in range(40):
        live = {f"g{generation}-n{i}": {"CPU": 2.0, "memory": 8e9} for i in range(nodes)}
        table.set_nodes(live)
        if generation == 0:  # the memory index is built here, then read no more
            assert table.memory_cap(oom) == 8e9
        for node_id in list(live)[:20]:  # attempts start and end: room and pace entries
            assert table.roomiest(w, lambda n: True) is not None
            table.learn(node_id, w.kind, clock() - 1.0, False, clock())
            table.add_load(node_id, w.shape, 1)
            table.add_load(node_id, w.shape, -1)
        sizes = table.sizes()
        assert sizes["nodes"] == nodes
        assert sizes["index_entries"] <= sizes["indexes"] * (4 * nodes + 64), (generation, sizes)
    assert len(table.paces.runtime) <= nodes and len(table.paces.last_done) <= nodes
    assert table.memory_cap(oom) == 8e9
