"""Degraded is a preference, not an exclusion (pure scheduler, fake clock, no Ray).

A degraded node (memory or disk above its threshold, a hot GPU) takes new work only when
no ok node has room, and no more than its free slots; a cluster whose nodes are all
degraded still runs its work. Fatal verdicts and missed heartbeats still exclude.
"""

from __future__ import annotations

from ray_ft.core.commands import Exclusions
from ray_ft.core.events import ExclusionsChanged, NodesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from tests.scheduler_harness import CONFIG, Harness, work

ONE_CPU = {n: {"CPU": 1.0, "memory": 4e9} for n in ("a", "b", "c")}


def harness(clock, queue_depth=1) -> Harness:
    sched = Scheduler(CONFIG, clock=clock, queue_depth=queue_depth)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged(ONE_CPU)))
    return h


def placed(h: Harness) -> list[str]:
    return sorted(a.node_id for a in h.running.values())


def _on(h: Harness, node: str) -> int:
    return next(i for i, a in h.running.items() if a.node_id == node)


def test_a_degraded_node_takes_work_only_when_the_ok_nodes_are_full(clock):
    h = harness(clock)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"c"})))))
    works = [work(i) for i in range(4)]
    h.run(h.sched.handle(Submitted((works[0],))))
    h.run(h.sched.handle(Submitted((works[1],))))
    assert placed(h) == ["a", "b"]  # c has a free slot, but a and b come first
    h.run(h.sched.handle(Submitted((works[2],))))
    assert placed(h) == ["a", "b", "c"]  # a and b are full: c takes it
    h.run(h.sched.handle(Submitted((works[3],))))
    assert h.sched.pending() == 1  # c is full too: nothing queues behind on a degraded node
    clock.advance(1.0)
    h.finish(_on(h, "c"), value=0)
    assert placed(h) == ["a", "b", "c"]  # a and b still full: the queued call takes c
    h.finish(_on(h, "a"), value=0)
    h.finish(_on(h, "c"), value=0)
    assert placed(h) == ["b"]
    h.run(h.sched.handle(Submitted((work(4),))))
    assert placed(h) == ["a", "b"]  # a and c both free: a, the ok node, takes it
    assert h.sched.summary()["excluded_nodes"] == []
    assert h.sched.summary()["degraded_nodes"] == ["c"]


def test_ok_nodes_queue_fast_work_before_a_degraded_node_gets_any(clock):
    h = harness(clock, queue_depth=4)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"c"})))))
    for node in ("a", "b", "c"):  # every node has learned a fast pace for "f"
        h.sched.state.table.set_pace(node, "f", 0.01, clock())
    for i in range(8):
        h.run(h.sched.handle(Submitted((work(i),))))
    assert placed(h) == ["a"] * 4 + ["b"] * 4  # 4 per ok slot (the pace allows it)
    h.run(h.sched.handle(Submitted((work(8),))))
    h.run(h.sched.handle(Submitted((work(9),))))
    assert placed(h).count("c") == 1  # then the degraded node: one, in its free slot


def test_a_cluster_whose_nodes_are_all_degraded_still_runs_everything(clock):
    h = harness(clock)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset(ONE_CPU)))))
    works = [work(i) for i in range(30)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    assert placed(h) == ["a", "b", "c"]
    for _ in range(20):
        clock.advance(0.2)
        for attempt_id in sorted(h.running):
            h.finish(attempt_id, value=attempt_id)
        h.run(h.sched.handle(Tick()))
    assert all(w.future.done() and w.future.exception() is None for w in works)


def test_a_node_that_turns_ok_again_is_preferred_again(clock):
    h = harness(clock)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"a", "b"})))))
    h.run(h.sched.handle(Submitted((work(0),))))
    assert placed(h) == ["c"]
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"c"})))))
    h.run(h.sched.handle(Submitted((work(1),))))
    h.run(h.sched.handle(Submitted((work(2),))))
    assert placed(h) == ["a", "b", "c"]  # c is busy and degraded now; a and b take work


def test_a_fatal_node_is_still_excluded_and_its_attempts_rerun(clock):
    h = harness(clock)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"b"})))))
    for i in range(2):
        h.run(h.sched.handle(Submitted((work(i),))))
    assert placed(h) == ["a", "c"]
    fatal = Exclusions(excluded=frozenset({"a"}), failed=frozenset({"a"}))
    h.run(h.sched.handle(ExclusionsChanged(fatal)))
    assert placed(h) == ["b", "c"]  # a's attempt reran on b, now no longer degraded
    assert h.sched.summary()["excluded_nodes"] == ["a"]


def test_no_backup_goes_to_a_degraded_node(clock):
    h = harness(clock)
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"c"})))))
    w = work(0)
    h.run(h.sched.handle(Submitted((w,))))
    assert h.sched.state.placement.backup_node(w, "a", threshold=10.0) == "b"
    h.run(h.sched.handle(ExclusionsChanged(Exclusions(degraded=frozenset({"b", "c"})))))
    assert h.sched.state.placement.backup_node(w, "a", threshold=10.0) is None
