"""FaultToleranceManager: failure windows, breakers, reassignment, state, recovery."""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest

from ray_ft.failures import FailureEvent, FailureType, Severity
from ray_ft.manager.breaker import BreakerState
from ray_ft.manager.state import FaultToleranceManager, Task, WorkerInfo, WorkerStatus
from ray_ft.manager.water_fill import water_fill as _water_fill
from ray_ft.optim.individual import Individual


def manager(clock, **cfg):
    return FaultToleranceManager(cfg, clock=clock, wall_clock=clock)


def test_task_and_worker_defaults():
    t = Task(task_id="t")
    assert (t.name, t.attempts, t.worker_id) == (None, 0, None)
    w = WorkerInfo("w")
    assert (w.status, w.capacity, w.load, w.free) == ("alive", 1, 0, 1)


def test_exhausted_task_recorded(clock):
    m = manager(clock, max_retries=2)
    t = Task("t1", worker_id="n1")
    first = m.handle_task_failure(t, FailureType.NODE_DIED, RuntimeError("x"))
    assert first and first.delay >= 0
    assert not m.handle_task_failure(t, FailureType.NODE_DIED, RuntimeError("x"))
    assert t in m.failed_tasks and t.attempts == 2 and m.task_retries == {"t1": 2}
    assert m.failure_counts["node_died"] == 2
    assert [e.attempt for e in m.history] == [1, 2]


def test_worker_breaker_opens_after_threshold_in_window(clock):
    m = manager(clock, worker_failure_threshold=2, failure_window=60, breaker_timeout=30)
    m.register_worker("a")
    for _ in range(2):
        m.handle_worker_failure("a")
    assert "a" not in m.excluded_workers()
    m.handle_worker_failure("a")
    assert m.breaker("a").state is BreakerState.OPEN
    assert "a" in m.excluded_workers()


def test_failures_outside_window_do_not_count(clock):
    m = manager(clock, worker_failure_threshold=2, failure_window=60)
    m.register_worker("a")
    m.handle_worker_failure("a")
    m.handle_worker_failure("a")
    clock.advance(61)
    m.handle_worker_failure("a")
    assert m.breaker("a").state is BreakerState.CLOSED


def test_half_open_trial_outcomes(clock):
    m = manager(clock, worker_failure_threshold=0, breaker_timeout=10)
    m.register_worker("a")
    m.handle_worker_failure("a")
    assert "a" in m.excluded_workers()
    clock.advance(10)
    assert "a" not in m.excluded_workers()
    assert m.half_open_workers() == {"a": 1}
    m.handle_worker_failure("a")  # the trial failed
    assert m.breaker("a").state is BreakerState.OPEN
    clock.advance(10)
    m.record_worker_success("a")
    assert m.breaker("a").state is BreakerState.CLOSED
    kinds = [(t["from"], t["to"]) for t in m.breaker_transitions]
    assert kinds == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]


def test_node_died_marks_dead_and_rejoin_revives(clock):
    m = manager(clock)
    m.register_worker("a")
    m.handle_worker_failure("a", FailureType.NODE_DIED)
    assert m.workers["a"].status == "alive"  # a task's report alone is not a verdict
    m.mark_worker_dead("a")
    assert m.workers["a"].status == "dead" and "a" in m.excluded_workers()
    m.register_worker("a")
    assert "a" not in m.excluded_workers()


def test_probe_verdicts(clock):
    m = manager(clock, breaker_timeout=5)
    m.register_worker("a")
    m.mark_worker_failed("a", ["probe missed 3 times"])
    assert "a" in m.excluded_workers() and m.health_reasons["a"] == ["probe missed 3 times"]
    m.mark_worker_healthy("a")
    assert m.workers["a"].status == "alive"
    assert "a" in m.excluded_workers()  # breaker still OPEN: recovery goes through a trial
    clock.advance(5)
    assert "a" not in m.excluded_workers()


def test_reassign_never_picks_failed_dead_or_open(clock):
    m = manager(clock, worker_failure_threshold=0, breaker_timeout=100)
    for w in "abcde":
        m.register_worker(w, capacity=4)
    m.mark_worker_dead("b")
    m.handle_worker_failure("c")  # opens c's breaker
    m.mark_worker_failed("d", ["hung"])
    plan = m.reassign_tasks("a", [f"t{i}" for i in range(6)], list(m.workers.values()))
    assert set(plan.values()) == {"e"}
    assert len(plan) == 6  # e has 4 free slots, yet no task is dropped while e is eligible


def test_reassign_spreads_by_free_capacity(clock):
    m = manager(clock)
    workers = [
        WorkerInfo("a", capacity=10, load=2),
        WorkerInfo("b", capacity=4),
        WorkerInfo("c", capacity=3, load=3),
    ]
    plan = m.reassign_tasks(None, [f"t{i}" for i in range(8)], workers)
    counts = {w: list(plan.values()).count(w) for w in "abc"}
    assert counts == {"a": 6, "b": 2, "c": 0}  # leaves a and b with 2 free each
    assert len(plan) == 8


def test_reassign_half_open_gets_trial_allowance_only(clock):
    m = manager(clock, worker_failure_threshold=0, breaker_timeout=1, half_open_max_calls=2)
    m.register_worker("h", capacity=10)
    m.handle_worker_failure("h")
    clock.advance(1)
    plan = m.reassign_tasks(None, [f"t{i}" for i in range(5)], ["h"])
    assert list(plan.values()) == ["h", "h"]


def test_water_fill_exact():
    assert _water_fill({"a": 5, "b": 5}, 3) in ([("a", 2), ("b", 1)], [("a", 1), ("b", 2)])
    assert _water_fill({"a": 1}, 5) == [("a", 1)]
    assert _water_fill({}, 5) == []
    big = {f"w{i}": (i % 7) + 1 for i in range(1000)}
    counts = dict(_water_fill(big, 2500))
    assert sum(counts.values()) == 2500
    assert all(counts.get(w, 0) <= f for w, f in big.items())
    left = {w: big[w] - counts.get(w, 0) for w in big}
    # even spread: nobody kept more than one slot above any worker that received tasks
    assert max(left.values()) - min(left[w] for w in counts) <= 1


def test_get_state_is_json_and_round_trips(clock):
    m = manager(clock, worker_failure_threshold=1, breaker_timeout=50)
    m.register_worker("a", capacity=2)
    m.handle_worker_failure("a")
    m.handle_worker_failure("a", FailureType.OUT_OF_MEMORY, "oom")
    m.handle_task_failure(Task("t", worker_id="a"), FailureType.APPLICATION_ERROR, ValueError())
    clock.advance(20)
    state = json.loads(json.dumps(m.get_state()))
    other = type(clock)(start=5.0)
    m2 = FaultToleranceManager(
        {"worker_failure_threshold": 1, "breaker_timeout": 50}, clock=other, wall_clock=other
    )
    m2.load_state(state)
    assert m2.breaker("a").state is BreakerState.OPEN
    assert m2.failure_counts == m.failure_counts
    assert list(m2.history) == list(m.history)
    assert [t.task_id for t in m2.failed_tasks] == ["t"]
    other.advance(30)
    assert m2.breaker("a").state is BreakerState.HALF_OPEN
    assert m2.get_state()["workers"] == m.get_state()["workers"]


def test_manager_pickles(clock):
    m = FaultToleranceManager({"max_retries": 4})
    m.register_worker("a")
    m.handle_worker_failure("a")
    again = pickle.loads(pickle.dumps(m))
    assert again.get_state()["history"] == m.get_state()["history"]
    assert pickle.loads(pickle.dumps(Task("t"))) == Task("t")
    assert pickle.loads(pickle.dumps(WorkerInfo("w"))) == WorkerInfo("w")


class TinyOptimizer:
    def __init__(self):
        self.population = []
        self.state = None

    def load_state(self, state):
        self.state = state


def test_recover_from_checkpoint(clock):
    m = manager(clock)
    pop = [Individual(np.array([1.0, 2.0]), fitness=3.0, generation=4)]
    ckpt = json.loads(
        json.dumps(
            {
                "generation": 5,
                "optimizer_state": {"k": 1},
                "population": [i.to_dict() for i in pop],
                "format_version": 1,
            }
        )
    )
    opt = TinyOptimizer()
    assert m.recover_from_checkpoint(ckpt, opt) == 5
    assert opt.state == {"k": 1} and opt.population == pop


def test_recover_refuses_incomplete_or_future(clock):
    m = manager(clock)
    with pytest.raises(ValueError, match="lacks population"):
        m.recover_from_checkpoint({"generation": 1, "optimizer_state": {}}, TinyOptimizer())
    with pytest.raises(ValueError, match="upgrade ray_ft"):
        m.recover_from_checkpoint(
            {"generation": 1, "optimizer_state": {}, "population": [], "format_version": 99},
            TinyOptimizer(),
        )


def test_trials_only_on_alive_half_open_nodes(clock):
    from ray_ft.failures import FailureEvent

    m = manager(clock, worker_failure_threshold=0, breaker_timeout=5, half_open_max_calls=1)
    m.register_worker("a")
    assert not m.acquire_trial("a")  # CLOSED: no trial needed
    m.handle_worker_failure("a")
    assert not m.acquire_trial("a")  # OPEN
    clock.advance(5)
    assert m.acquire_trial("a") and not m.acquire_trial("a")  # one slot
    m.record_trial("a", False, FailureEvent(0.0, FailureType.APPLICATION_ERROR))
    assert m.breaker("a").state is BreakerState.HALF_OPEN  # slot given back
    assert m.acquire_trial("a")
    m.record_trial("a", False, FailureEvent(0.0, FailureType.WORKER_CRASH))
    assert m.breaker("a").state is BreakerState.OPEN
    clock.advance(5)
    assert m.acquire_trial("a")
    m.record_trial("a", True)
    assert m.breaker("a").state is BreakerState.CLOSED
    m.mark_worker_dead("a")
    assert not m.acquire_trial("a")


def test_mass_failure_guard_suspects_the_observer_and_excludes_no_more(caplog):
    """Kubernetes' rule: when a majority of the nodes (at least three) would look failed at
    once, the manager suspects itself and holds back further liveness verdicts."""
    m = FaultToleranceManager()
    nodes = [f"n{i}" for i in range(10)]
    for node in nodes:
        m.register_worker(node)
    with caplog.at_level("WARNING", logger="ray_ft.manager.crowd"):
        applied = [m.update_liveness(n, False, "silent") for n in nodes[:7]]
    assert applied == [True] * 5 + [False] * 2
    assert m.observer_suspect and m.excluded_workers() == set(nodes[:5])
    assert "suspecting ray_ft's own manager" in caplog.text
    assert caplog.text.count("suspecting") == 1  # said once, not per refused verdict
    m.update_liveness("n0", True)  # one answers again: four of ten look failed
    assert not m.observer_suspect and "exclusions resume" in caplog.text
    assert m.update_liveness("n5", False, "silent")  # a real failure is excluded again


def test_mass_failure_guard_leaves_small_clusters_their_two_failures():
    m = FaultToleranceManager()
    for node in ("a", "b", "c"):
        m.register_worker(node)
    assert m.update_liveness("a", False) and m.update_liveness("b", False)
    assert not m.update_liveness("c", False)  # every node at once: the observer
    m.mark_worker_dead("a")  # Ray says it is gone: it no longer counts as looking failed
    assert m.excluded_workers() == {"a", "b"}


def test_snapshot_is_rebuilt_only_when_something_changed(clock):
    m = FaultToleranceManager({"breaker_timeout": 10.0}, clock=clock)
    for node in ("a", "b"):
        m.register_worker(node)
    first = m.exclusions_snapshot()
    assert m.exclusions_snapshot() is first  # nothing changed: the same answer, no rebuild
    m.breaker("a").open()
    opened = m.exclusions_snapshot()
    assert opened["token"] != first["token"] and opened["excluded"] == ["a"]
    clock.advance(10.0)  # due to turn HALF_OPEN: no event, the due time says so
    half = m.exclusions_snapshot()
    assert half["half_open"] == {"a": 1} and half["token"] != opened["token"]


def test_departed_nodes_are_forgotten_after_the_tombstone_window(clock):
    m = FaultToleranceManager(clock=clock)
    for generation in range(5):
        nodes = [f"g{generation}-{i}" for i in range(100)]
        for node in nodes:
            m.register_worker(node)
            m.handle_worker_failure(node, FailureType.NODE_DIED)
            m.update_health(node, "degraded", ["hot"])
        clock.advance(1.0)
        for node in nodes:
            m.mark_worker_dead(node)
        clock.advance(60.0)
        m.prune_departed(30.0)
    tables = (m.workers, m.circuit_breakers, m.worker_failures, m.health_severity)
    assert all(len(t) == 0 for t in tables)
    assert m.exclusions_snapshot()["dead"] == []


def test_a_storm_of_reports_costs_the_same_per_event(clock):
    """10,000 suspect reports over 1,000 nodes: the outlier test reads cached counts."""
    m = FaultToleranceManager({"worker_failure_threshold": 1}, clock=clock)
    for i in range(1000):
        m.register_worker(f"n{i}")
    for k in range(10_000):
        node = f"n{k % 1000}" if k % 10 else "n7"  # n7 fails far more often
        m.report_failure(
            FailureEvent(
                timestamp=time.time(),
                failure_type=FailureType.WORKER_CRASH,
                worker_id=node,
                blame="node",
            )
        )
    assert "n7" in m.excluded_workers()
    assert len(m.excluded_workers()) < 50


def test_median_without_ones_own_count_matches_the_plain_median():
    import random
    import statistics

    from ray_ft.manager.crowd import median_without as _median_without

    rng = random.Random(3)
    for _ in range(500):
        counts = sorted(rng.randint(0, 6) for _ in range(rng.randint(1, 9)))
        mine = rng.choice(counts)
        others = list(counts)
        others.remove(mine)
        expected = statistics.median(others) if others else None
        assert _median_without(counts, mine) == expected
        assert _median_without(counts, None) == statistics.median(counts)


def test_new_settings_keep_the_breakers_state_and_take_the_new_timeout(clock):
    from ray_ft.config import FTConfig

    m = manager(clock, worker_failure_threshold=1, failure_window=60, breaker_timeout=30)
    m.register_worker("a")
    for _ in range(2):
        m.handle_worker_failure("a")
    assert m.breaker("a").state is BreakerState.OPEN
    before = m.version
    m.update_config(m.config.replace(breaker_timeout=5.0))
    assert isinstance(m.config, FTConfig) and m.version > before  # snapshots are void
    assert m.breaker("a").state is BreakerState.OPEN and m.breaker("a").timeout == 5.0
    clock.advance(5.0)
    assert m.breaker("a").state is BreakerState.HALF_OPEN


def test_a_node_that_left_loses_its_heartbeat_verdict_through_the_version(clock):
    m = FaultToleranceManager(clock=clock)
    m.register_worker("w1", 1)
    m.update_liveness("w1", False, "silent")
    assert m.failed_by_liveness("w1")
    before = m.version
    m.forget_liveness("w1")
    assert not m.failed_by_liveness("w1") and m.version > before


def test_each_room_round_trips_its_section_of_the_state_file(clock):
    """The failure log, the breakers and the verdicts write and read their own sections;
    what the manager decides from them is the same after a reload."""
    m = manager(clock, worker_failure_threshold=1, breaker_timeout=50)
    for node in "abcd":
        m.register_worker(node)
    m.handle_worker_failure("a")
    m.handle_worker_failure("a")  # over the threshold: OPEN, one transition
    m.handle_worker_failure("b")
    m.update_health("c", Severity.DEGRADED, ["disk 96% full"])
    m.update_liveness("d", alive=False, reason="silent 9 s")
    m.mark_worker_dead("b")  # b's window stays, b is nobody's peer
    state = json.loads(json.dumps(m.get_state()))

    m2 = manager(type(clock)(start=clock.now), worker_failure_threshold=1, breaker_timeout=50)
    m2.load_state(state)
    assert json.loads(json.dumps(m2.get_state())) == state
    assert m2.breaker_transitions == m.breaker_transitions
    assert m2.node_reasons("c") == ["disk 96% full"] and m2.node_reasons("d") == ["silent 9 s"]
    assert m2.health_severity["c"] is Severity.DEGRADED
    assert m2.workers["c"].status == WorkerStatus.DEGRADED
    assert m2.workers["d"].status == WorkerStatus.FAILED
    assert m2.failures.peers.count_of == m.failures.peers.count_of == {"a": 2}
    assert m2.exclusions_snapshot()["excluded"] == m.exclusions_snapshot()["excluded"]
