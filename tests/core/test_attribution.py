"""Fault attribution, verdict severities and the heartbeat detector (pure, fake clock)."""

from __future__ import annotations

import pickle

import pytest

from ray_ft.core.attribution import Blame, CrashLedger
from ray_ft.core.events import NodesChanged, Submitted, Tick
from ray_ft.failures import FailureEvent, FailureType
from ray_ft.health.monitor import Finding, HealthMonitor, HealthReport, Severity
from ray_ft.manager.breaker import BreakerState
from ray_ft.manager.liveness import PhiAccrualDetector
from ray_ft.manager.state import FaultToleranceManager, Task, WorkerStatus

CRASH = FailureType.WORKER_CRASH


def crash(task: str, node: str, kind: FailureType = CRASH) -> FailureEvent:
    return FailureEvent(0.0, kind, task_id=task, worker_id=node)


def manager(clock, **cfg):
    m = FaultToleranceManager(cfg, clock=clock, wall_clock=clock)
    for node in "abc":
        m.register_worker(node)
    return m


# -- the ledger ----------------------------------------------------------------------------


def test_crash_followed_by_success_elsewhere_charges_the_node():
    ledger = CrashLedger()
    blame, decided = ledger.failed(crash("t", "a"))
    assert (blame, decided) == (Blame.UNDECIDED, [])
    (charged,) = ledger.succeeded("t", "b")
    assert (charged.worker_id, charged.blame) == ("a", "node")
    assert len(ledger) == 0


def test_crash_on_two_nodes_is_a_poison_task():
    ledger = CrashLedger()
    ledger.failed(crash("p", "a"))
    blame, decided = ledger.failed(crash("p", "b"))
    assert blame is Blame.TASK and ledger.is_poison("p")
    assert [(e.worker_id, e.blame) for e in decided] == [("a", "task"), ("b", "task")]
    blame, decided = ledger.failed(crash("p", "c"))
    assert blame is Blame.TASK and [e.blame for e in decided] == ["task"]
    assert ledger.finished("p") == [] and len(ledger) == 0


def test_timeout_and_oom_are_suspect_node_death_is_direct_app_error_is_the_tasks():
    ledger = CrashLedger()
    assert ledger.failed(crash("t", "a", FailureType.TASK_TIMEOUT))[0] is Blame.UNDECIDED
    assert ledger.failed(crash("o", "a", FailureType.OUT_OF_MEMORY))[0] is Blame.UNDECIDED
    blame, (event,) = ledger.failed(crash("d", "a", FailureType.NODE_DIED))
    assert blame is Blame.NODE and event.blame == "node"
    blame, (event,) = ledger.failed(crash("x", "a", FailureType.APPLICATION_ERROR))
    assert blame is Blame.TASK and event.blame == "task"
    # a task that ends without success charges nobody
    assert [e.blame for e in ledger.finished("t")] == ["task"]


def test_success_on_the_same_node_charges_nobody():
    ledger = CrashLedger()
    ledger.failed(crash("t", "a"))
    assert [e.blame for e in ledger.succeeded("t", "a")] == ["task"]


# -- the manager: who opens a breaker ------------------------------------------------------


def test_abandoned_and_task_blamed_events_never_open_a_breaker(clock):
    m = manager(clock, worker_failure_threshold=1)
    for blame in ("none", "task", "placement"):
        for _ in range(5):
            m.report_failure(
                FailureEvent(clock(), FailureType.NODE_DIED, worker_id="a", blame=blame)
            )
    assert m.breaker("a").state is BreakerState.CLOSED
    assert m.failure_counts["node_died"] == 15


def test_crashes_spread_evenly_over_nodes_exclude_nothing(clock):
    m = manager(clock, worker_failure_threshold=2)
    for i in range(12):  # a flaky objective: crashes everywhere alike
        node = "abc"[i % 3]
        event = FailureEvent(clock(), CRASH, task_id=f"t{i}", worker_id=node, blame="node")
        m.report_failure(event)
    assert m.excluded_workers() == set()


def test_crashes_of_different_tasks_on_one_node_open_it(clock):
    m = manager(clock, worker_failure_threshold=2)
    m.report_failure(FailureEvent(clock(), CRASH, task_id="x", worker_id="b", blame="node"))
    for i in range(3):
        m.report_failure(FailureEvent(clock(), CRASH, task_id=f"t{i}", worker_id="a", blame="node"))
    assert m.excluded_workers() == {"a"}


def test_seed_handle_worker_failure_opens_after_more_than_three(clock):
    m = FaultToleranceManager(clock=clock, wall_clock=clock)
    for _ in range(3):
        m.handle_worker_failure("w1")
    assert not m.circuit_breakers["w1"].is_open()
    m.handle_worker_failure("w1")
    assert m.circuit_breakers["w1"].is_open()
    events = m.worker_failures["w1"]
    assert isinstance(events, list) and all(isinstance(e, FailureEvent) for e in events)
    assert all(e.timestamp == clock() for e in events)  # wall times, not rewritten


# -- the seed's names and types ------------------------------------------------------------


def test_seed_attribute_types(clock):
    m = FaultToleranceManager({"max_retries": 3}, clock=clock, wall_clock=clock)
    assert isinstance(m.task_retries, dict) and isinstance(m.failed_tasks, list)
    assert isinstance(m.worker_failures, dict) and isinstance(m.circuit_breakers, dict)
    assert m.breakers is m.circuit_breakers


def test_a_fresh_task_object_per_failure_still_runs_out_on_the_third(clock):
    m = FaultToleranceManager({"max_retries": 3}, clock=clock, wall_clock=clock)
    decisions = [m.handle_task_failure(Task(task_id="x"), CRASH) for _ in range(3)]
    assert [bool(d) for d in decisions] == [True, True, False]
    assert m.task_retries == {"x": 3}
    assert Task(task_id="x", attempts=3) in m.failed_tasks


def test_reassign_seed_example_keeps_every_task():
    from ray_ft.manager.state import WorkerInfo

    plan = FaultToleranceManager().reassign_tasks("w1", ["a", "b", "c"], [WorkerInfo("w2")])
    assert plan == {"a": "w2", "b": "w2", "c": "w2"}


def test_reassign_with_no_eligible_worker_keeps_tasks_queued(clock):
    m = manager(clock, worker_failure_threshold=0)
    m.handle_worker_failure("b")
    assert m.reassign_tasks("a", ["t1", "t2"], ["a", "b"]) == {}


# -- severities ----------------------------------------------------------------------------


def test_degraded_is_placed_last_not_excluded_and_never_opens(clock):
    m = manager(clock)
    m.update_health("a", "degraded", ["memory at 97%"])
    snap = m.exclusions_snapshot()
    assert snap["degraded"] == ["a"] and snap["failed"] == [] and snap["excluded"] == []
    assert m.breaker("a").state is BreakerState.CLOSED
    m.update_health("a", "ok", [])
    assert m.workers["a"].status == WorkerStatus.ALIVE and m.excluded_workers() == set()
    assert m.exclusions_snapshot()["degraded"] == []


def test_a_degraded_node_with_an_open_breaker_is_excluded_then_gets_trials(clock):
    m = manager(clock, breaker_timeout=10.0)
    m.update_health("a", "degraded", ["disk at 97.0% exceeds 95%"])
    m.breaker("a").open()
    assert m.exclusions_snapshot()["excluded"] == ["a"]
    clock.advance(11.0)
    assert m.exclusions_snapshot()["half_open"] == {"a": 1}  # degraded still takes trials


def test_most_nodes_degraded_at_once_is_said_once_with_the_shared_reason(clock, caplog):
    m = manager(clock)
    for node, value in (("a", 97.2), ("b", 96.0)):
        m.update_health(node, "degraded", [f"disk at {value}% exceeds 1%"])
    m.update_health("c", "ok", [])
    assert m.mass_degraded is None  # 2 of 3: a minority of at least three is not "most"
    with caplog.at_level("WARNING", logger="ray_ft.manager.crowd"):
        m.update_health("c", "degraded", ["disk at 99.1% exceeds 1%", "memory at 97% exceeds 95%"])
        m.update_health("c", "degraded", ["disk at 99.3% exceeds 1%"])  # no second warning
    assert m.mass_degraded == "disk above 1% on 3 of 3 nodes"
    assert caplog.text.count("most nodes are degraded at once") == 1
    assert "disk above 1% on 3 of 3 nodes" in caplog.text
    assert m.excluded_workers() == set()
    m.update_health("a", "ok", [])
    assert m.mass_degraded is None and "fewer nodes are degraded (2 of 3)" in caplog.text


def test_fatal_health_and_lost_liveness_fail_the_node(clock):
    m = manager(clock)
    m.update_health("a", "fatal", ["GPU 0 is lost"])
    m.update_liveness("b", False, "stopped answering")
    snap = m.exclusions_snapshot()
    assert snap["failed"] == ["a", "b"] and m.breaker("a").is_open()
    m.update_liveness("b", True)
    assert m.workers["b"].status == WorkerStatus.ALIVE
    assert m.node_reasons("a") == ["GPU 0 is lost"]


BUSY = {
    "cpu_percent": 100.0,
    "memory_percent": 60.0,
    "disk_percent": 50.0,
    "disk_free_gb": 100.0,
    "gpus": [{"id": 0, "load": 1.0, "memory_used": 98.0, "memory_total": 100.0, "temperature": 70}],
}


def test_busy_node_at_full_cpu_and_gpu_memory_is_ok():
    report = HealthMonitor(gpu_backend=None).check(BUSY)
    assert report == HealthReport(True, (), Severity.OK)


@pytest.mark.parametrize(
    ("change", "severity"),
    [
        ({"memory_percent": 97.0}, Severity.DEGRADED),
        ({"disk_percent": 97.0}, Severity.DEGRADED),
        ({"disk_free_gb": 0.01}, Severity.FATAL),
        (
            {"gpus": [{"id": 0, "thermal_slowdown": True, "slowdown_sustained": True}]},
            Severity.DEGRADED,
        ),
        ({"gpus": [{"id": 0, "ecc_double_bit": 2}]}, Severity.FATAL),
        ({"gpus": [{"id": 0, "lost": True}]}, Severity.FATAL),
    ],
)
def test_severity_of_each_finding(change, severity):
    report = HealthMonitor(gpu_backend=None).check({**BUSY, **change})
    assert report.severity is severity and not report and len(report.reasons) == 1


def test_cpu_threshold_is_an_opt_in_and_only_degrades():
    report = HealthMonitor({"cpu_threshold": 90.0}, gpu_backend=None).check(BUSY)
    assert report.severity is Severity.DEGRADED and not report.fatal


def test_report_pickles_with_severity():
    r = HealthReport.of([Finding(Severity.FATAL, "x"), Finding(Severity.DEGRADED, "y")])
    assert r.severity is Severity.FATAL and r.reasons == ("x", "y")
    assert pickle.loads(pickle.dumps(r)) == r


def test_get_system_health_is_a_staticmethod_with_a_meaningful_first_cpu():
    import ray_ft.health.monitor as health

    assert isinstance(HealthMonitor.__dict__["get_system_health"], staticmethod)
    meter = health._CpuMeter()  # a fresh meter: its first reading waits out a real interval
    first = meter.percent()
    assert 0.0 <= first <= 100.0
    assert meter._last is not None


# -- the heartbeat detector ----------------------------------------------------------------


def beat(detector, clock, gaps):
    for gap in gaps:
        clock.advance(gap)
        detector.heartbeat()


def test_steady_node_stays_alive_and_frozen_one_is_found_in_about_three_seconds(clock):
    d = PhiAccrualDetector(threshold=8.0, timeout_floor=2.0, clock=clock)
    beat(d, clock, [1.0] * 30)
    clock.advance(1.5)
    assert d.is_alive()
    found = None
    for tenth in range(1, 100):
        clock.advance(0.1)
        if not d.is_alive():
            found = 1.5 + tenth * 0.1
            break
    assert found is not None and found <= 3.0


def test_busy_node_with_slow_uneven_answers_stays_alive(clock):
    d = PhiAccrualDetector(threshold=8.0, timeout_floor=2.0, clock=clock)
    beat(d, clock, [1.0, 2.5, 1.2, 3.0, 1.1, 2.8, 1.4, 3.2] * 4)
    clock.advance(3.5)  # a long gap, but within what this node has shown
    assert d.is_alive()
    clock.advance(20)
    assert not d.is_alive()


def test_floor_and_forgiveness(clock):
    d = PhiAccrualDetector(threshold=1.0, timeout_floor=5.0, clock=clock)
    assert d.is_alive()  # no answer yet: no verdict
    beat(d, clock, [0.1] * 20)
    clock.advance(4.0)
    assert d.is_alive()  # phi is huge, but the floor holds
    d.forgive(10.0)  # the observer itself stalled
    assert d.silence() == 0.0 and d.is_alive()
    with pytest.raises(ValueError, match="timeout_floor"):
        PhiAccrualDetector(timeout_floor=-1)


def test_trial_leases_are_taken_back_after_the_lease_timeout(clock):
    m = manager(clock, worker_failure_threshold=0, breaker_timeout=10, half_open_max_calls=2)
    m.handle_worker_failure("a")
    clock.advance(10)
    assert m.acquire_trial("a") and m.acquire_trial("a") and not m.acquire_trial("a")
    m.record_trial("a", False)  # one given back (a cancel): one slot free again
    assert m.half_open_workers() == {"a": 1}
    clock.advance(10)  # the other holder died: its lease expires
    assert m.expire_trial_leases() == ["a"]
    assert m.half_open_workers() == {"a": 2}


def test_a_call_out_of_retries_names_no_undecided_blame(clock):
    """The error of a call that ran out of retries carries its failures with their blame
    settled (a crash seen on one node only is nobody's fault, never 'undecided')."""
    from ray_ft.core.scheduler import Scheduler
    from tests.scheduler_harness import CONFIG, Harness, work

    sched = Scheduler(CONFIG, clock=clock)
    harness = Harness(sched, clock)
    harness.run(sched.handle(NodesChanged({"a": {"CPU": 1.0}})))
    call = work(0)
    harness.run(sched.handle(Submitted((call,))))
    for _ in range(CONFIG.max_retries):
        (attempt_id,) = list(harness.running)
        crash = RuntimeError("worker died")
        harness.finish(attempt_id, error=crash, failure_type=FailureType.WORKER_CRASH)
        clock.advance(10)
        harness.run(sched.handle(Tick()))
    error = call.future.exception(timeout=0)
    assert error is not None and error.events
    assert all(e.blame not in (None, Blame.UNDECIDED.value) for e in error.events), error.events
