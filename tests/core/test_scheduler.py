"""The pure scheduler, without Ray: a fake clock, hand-made events, property-based tests.

Invariants (docs/design.md): every future resolves exactly once; in-flight attempts per node
never exceed its capacity for their shape; no attempt goes to an excluded node (trials go
only where a lease is held); a task never exceeds its attempts.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ray_ft.core.commands import (
    Cancel,
    CapacityError,
    Exclusions,
    ReleaseTrial,
)
from ray_ft.core.events import (
    BatchFailed,
    CancelQueued,
    DrainingChanged,
    ExclusionsChanged,
    GaveUp,
    NodesChanged,
    Submitted,
    Tick,
    TrialGranted,
    WentIdle,
)
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec, Work
from ray_ft.failures import FailureType, TaskFailedError
from tests.conftest import FakeClock
from tests.scheduler_harness import CONFIG, NODES, Harness, work


@pytest.fixture
def harness(clock):
    sched = Scheduler(CONFIG, clock=clock, queue_depth=4)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged(NODES)))
    return h


def test_first_attempts_fill_free_slots_then_wait(harness):
    futures = []
    for i in range(6):
        w = work(i)
        futures.append(w.future)
        harness.run(harness.sched.handle(Submitted((w,))))
    assert len(harness.running) == 4  # a: 2 slots, b: 1, c: 1; unknown pace: depth 1
    assert harness.sched.pending() == 2
    first = harness.running[next(iter(harness.running))]
    harness.clock.advance(0.1)
    harness.finish(first.attempt_id, value=1)
    # its node finishes work in 0.1 s: it now takes a deeper queue (both waiting calls)
    assert harness.sched.pending() == 0
    assert sum(a.node_id == first.node_id for a in harness.running.values()) == 3


def test_gpu_work_goes_only_where_a_gpu_is(harness):
    for i in range(3):
        harness.run(harness.sched.handle(Submitted((work(i, gpu=True),))))
    assert {a.node_id for a in harness.running.values()} == {"c"}
    assert len(harness.running) == 1


def test_request_that_fits_nowhere_fails_with_capacity_error(harness):
    w = work(0)
    w = Work("g-0", "g", None, b"", (), {}, CallSpec.of({"resources": {"tpu": 1}}, None), w.future)
    harness.run(harness.sched.handle(Submitted((w,))))
    harness.clock.advance(31)
    harness.run(harness.sched.handle(Tick()))
    with pytest.raises(CapacityError, match="tpu=1"):
        w.future.result(0)
    assert harness.reports == []


def test_retry_waits_its_delay_and_goes_elsewhere(harness):
    w = work(0)
    harness.run(harness.sched.handle(Submitted((w,))))
    (attempt,) = harness.running.values()
    harness.finish(
        attempt.attempt_id, error=RuntimeError("x"), failure_type=FailureType.WORKER_CRASH
    )
    assert harness.running == {}
    harness.clock.advance(CONFIG.max_retry_delay)
    harness.run(harness.sched.handle(Tick()))
    (retry,) = harness.running.values()
    assert retry.node_id != attempt.node_id


def test_exhausted_retries_raise_task_failed_with_events(harness):
    w = work(0)
    harness.run(harness.sched.handle(Submitted((w,))))
    for _ in range(3):
        (attempt,) = harness.running.values()
        harness.finish(
            attempt.attempt_id, error=RuntimeError("x"), failure_type=FailureType.NODE_DIED
        )
        harness.clock.advance(CONFIG.max_retry_delay)
        harness.run(harness.sched.handle(Tick()))
    with pytest.raises(TaskFailedError) as info:
        w.future.result(0)
    assert info.value.attempts == 3 and len(info.value.events) == 3


def test_timeout_cancels_and_counts(harness):
    w = work(0, timeout=5.0)
    harness.run(harness.sched.handle(Submitted((w,))))
    harness.clock.advance(5.0)
    commands = harness.sched.handle(Tick())
    assert any(isinstance(c, Cancel) for c in commands)
    harness.run(commands)
    assert harness.sched.state.stats["timeouts"] == 1


def test_abandoned_attempts_rerun_elsewhere_charging_nobody(harness):
    for i in range(4):
        harness.run(harness.sched.handle(Submitted((work(i),))))
    on_a = [a for a in harness.running.values() if a.node_id == "a"]
    harness.run(
        harness.sched.handle(
            ExclusionsChanged(Exclusions(excluded=frozenset({"a"}), failed=frozenset({"a"})))
        )
    )
    assert all(a.attempt_id not in harness.running for a in on_a)
    assert {e.blame for e in harness.reports} == {"none"}
    assert harness.sched.state.stats["retries"] == 0 and harness.sched.state.stats[
        "abandoned"
    ] == len(on_a)


def test_placement_failure_is_no_retry(harness):
    w = work(0)
    harness.run(harness.sched.handle(Submitted((w,))))
    (attempt,) = harness.running.values()
    harness.finish(attempt.attempt_id, error=RuntimeError("unschedulable"), placement=True)
    (again,) = harness.running.values()
    assert again.node_id != attempt.node_id and harness.sched.state.stats["retries"] == 0
    assert w.failures == 0 and {e.blame for e in harness.reports} == {"placement"}


def test_trial_lease_only_for_queued_work_and_returned_when_idle(harness):
    snapshot = Exclusions(half_open=(("b", 1),))
    harness.run(harness.sched.handle(ExclusionsChanged(snapshot)))
    assert harness.trial_requests == []  # nothing queued: no lease taken
    for i in range(8):
        harness.run(harness.sched.handle(Submitted((work(i),))))
    assert harness.trial_requests == ["b"]
    harness.run(harness.sched.handle(TrialGranted("b", True)))
    trials = [a for a in harness.running.values() if a.trial]
    assert [a.node_id for a in trials] == ["b"]
    harness.run(harness.sched.handle(TrialGranted("b", True)))  # a second grant with work queued
    assert harness.sched.handle(WentIdle()) in ([], [ReleaseTrial("b", False)])


def test_slow_node_is_left_idle_when_others_clear_the_queue_first(harness):
    sched = Scheduler(CONFIG, clock=harness.clock, queue_depth=4)
    h = Harness(sched, harness.clock)
    h.run(
        sched.handle(
            NodesChanged({"fast1": {"CPU": 1.0}, "fast2": {"CPU": 1.0}, "slow": {"CPU": 1.0}})
        )
    )
    for i in range(24):
        h.run(sched.handle(Submitted((work(i, name="eval"),))))
    # learn the pace: fast nodes 0.4 s, the slow one 3.2 s
    for _ in range(8):
        h.clock.advance(0.4)
        for attempt in [a for a in list(h.running.values()) if a.node_id != "slow"]:
            if h.clock.now - attempt.launched_at >= 0.4 - 1e-9:
                h.finish(attempt.attempt_id, value=0)
    h.clock.advance(0.0)
    slow = [a for a in h.running.values() if a.node_id == "slow"]
    assert len(slow) == 1
    h.finish(slow[0].attempt_id, value=0)  # took 3.2 s
    assert not [a for a in h.running.values() if a.node_id == "slow"], "the slow node got more"


def test_a_first_attempt_that_waited_for_a_worker_is_not_slowness(harness):
    """Cold start: on a fresh cluster only the driver's node has a worker ready; the first
    attempt elsewhere waits ~1 s for a process. That node still takes its share, and its
    next attempt replaces the first pace."""
    sched = Scheduler(CONFIG, clock=harness.clock, queue_depth=4, home="home")
    h = Harness(sched, harness.clock)
    h.run(sched.handle(NodesChanged({"home": {"CPU": 1.0}, "cold": {"CPU": 1.0}})))
    for i in range(4):
        h.run(sched.handle(Submitted((work(i, name="burn"),))))
    first = {a.node_id: a.attempt_id for a in h.running.values()}
    assert set(first) == {"home", "cold"}
    h.clock.advance(1.0)
    h.finish(first["home"], value=0)  # 1 s of work on a warm worker
    h.clock.advance(1.2)
    h.finish(first["cold"], value=0)  # 1 s of work after 1.2 s of process start
    assert {a.node_id for a in h.running.values()} == {"home", "cold"}, "cold stood back"
    assert sched.state.table.paces.provisional >= {("cold", "burn")}
    cold = next(a for a in h.running.values() if a.node_id == "cold")
    h.clock.advance(1.0)
    h.finish(cold.attempt_id, value=0)
    assert sched.state.table.paces.runtime[("cold", "burn")] == pytest.approx(1.0)
    assert ("cold", "burn") not in sched.state.table.paces.provisional


def test_the_drivers_node_is_first_among_equals(harness):
    sched = Scheduler(CONFIG, clock=harness.clock, queue_depth=4, home="zz-driver")
    h = Harness(sched, harness.clock)
    h.run(sched.handle(NodesChanged({n: {"CPU": 1.0} for n in ("a", "b", "zz-driver")})))
    h.run(sched.handle(Submitted((work(0),))))
    assert [a.node_id for a in h.running.values()] == ["zz-driver"]


def test_nodes_of_equal_pace_never_all_stand_back(harness):
    """Regression: with every pace known and one call queued, some node must take it."""
    sched, h = harness.sched, harness
    for rnd in range(3):
        for i in range(4):
            h.run(sched.handle(Submitted((work(rnd * 10 + i),))))
        h.clock.advance(1.0)
        for attempt_id in sorted(h.running):
            h.finish(attempt_id, value=0)
    assert sched.idle and not h.running
    h.run(sched.handle(Submitted((work(99),))))
    assert len(h.running) == 1


def test_a_stale_pace_stops_deepening_the_queue(harness):
    """Quick first calls taught a deep queue; one call stuck far longer than that pace
    lowers the node's depth even while its other slot keeps finishing quick calls."""
    sched, h = harness.sched, harness
    h.run(sched.handle(NodesChanged({"duo": {"CPU": 2.0}})))
    h.run(sched.handle(Submitted((work(0),))))
    h.clock.advance(0.01)
    h.finish(next(iter(h.running)), value=0)  # pace: 10 ms -> depth 4, 8 in flight
    for i in range(1, 40):
        h.run(sched.handle(Submitted((work(i),))))
    stuck = min(h.running.values(), key=lambda a: a.attempt_id)
    assert len(h.running) == 8
    for _ in range(20):  # the other slot keeps finishing calls every 10 ms
        h.clock.advance(0.01)
        quick = min((a for a in h.running.values() if a is not stuck), key=lambda a: a.attempt_id)
        h.finish(quick.attempt_id, value=0)
    # the stuck call is 0.2 s old, 20x the pace: at most one more call per slot queued
    assert len(h.running) <= 2 * 2


# -- the state machine -----------------------------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        config = CONFIG.replace(speculation=True, speculation_min_runtime=0.5)
        self.sched = Scheduler(config, clock=self.clock, queue_depth=3, max_in_flight=6)
        self.h = Harness(self.sched, self.clock)
        self.h.run(self.sched.handle(NodesChanged(NODES)))
        self.works: list[Work] = []
        self.failures: Counter[str] = Counter()
        self.shut = False
        self.joined = 0

    @precondition(lambda self: not self.shut)
    @rule(gpu=st.booleans(), timed=st.booleans(), name=st.sampled_from(["f", "g"]))
    def submit(self, gpu, timed, name):
        w = work(len(self.works), gpu=gpu, timeout=3.0 if timed else None, name=name)
        self.works.append(w)
        self.h.run(self.sched.handle(Submitted((w,))))

    @precondition(lambda self: self.h.running)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["ok", "crash", "node_died", "app", "placement", "timeout", "oom"]),
        dt=st.floats(0.0, 2.0),
    )
    def finish(self, data, outcome, dt):
        self.clock.advance(dt)
        attempt_id = data.draw(st.sampled_from(sorted(self.h.running)))
        if outcome == "ok":
            self.h.finish(attempt_id, value=attempt_id)
            return
        kinds = {
            "crash": FailureType.WORKER_CRASH,
            "node_died": FailureType.NODE_DIED,
            "app": FailureType.APPLICATION_ERROR,
            "timeout": FailureType.TASK_TIMEOUT,
            "oom": FailureType.OUT_OF_MEMORY,
            "placement": None,
        }
        self.h.finish(
            attempt_id,
            error=RuntimeError(outcome),
            failure_type=kinds[outcome],
            placement=outcome == "placement",
        )

    @precondition(lambda self: not self.shut)
    @rule(keep=st.integers(0, 3))
    def straggle(self, keep):
        """A batch of "s" where one attempt lags: backups start, twins race."""
        batch = [work(len(self.works) + i, name="s") for i in range(4)]
        self.works.extend(batch)
        for w in batch:
            self.h.run(self.sched.handle(Submitted((w,))))
        self.clock.advance(0.3)
        mine = sorted(i for i, a in self.h.running.items() if a.work in batch)
        for attempt_id in mine[:keep] + mine[keep + 1 :]:
            self.h.finish(attempt_id, value=attempt_id)
        self.clock.advance(1.0)
        self.h.run(self.sched.handle(Tick()))

    @rule(dt=st.floats(0.0, 5.0))
    def tick(self, dt):
        self.clock.advance(dt)
        self.h.run(self.sched.handle(Tick()))

    @rule(
        node=st.sampled_from(sorted(NODES)),
        how=st.sampled_from(["fail", "open", "half", "degraded", "all_degraded", "clear"]),
    )
    def verdict(self, node, how):
        snapshot = {
            "fail": Exclusions(excluded=frozenset({node}), failed=frozenset({node})),
            "open": Exclusions(excluded=frozenset({node})),
            "half": Exclusions(half_open=((node, 1),)),
            "degraded": Exclusions(degraded=frozenset({node})),  # placed last, not excluded
            "all_degraded": Exclusions(degraded=frozenset(NODES)),
            "clear": Exclusions(),
        }[how]
        self.h.run(self.sched.handle(ExclusionsChanged(snapshot)))

    @precondition(lambda self: any(not w.future.done() for w in self.works))
    @rule(data=st.data())
    def give_up(self, data):
        """A map() iterator closed: its calls are given up, queued, running or waiting."""
        pending = [w for w in self.works if not w.future.done()]
        chosen = data.draw(st.lists(st.sampled_from(pending), min_size=1, max_size=3))
        self.h.run(self.sched.handle(GaveUp(tuple(chosen))))
        assert all(w.future.done() for w in chosen)

    @precondition(lambda self: self.h.trial_requests)
    @rule(granted=st.booleans())
    def answer_trial(self, granted):
        node = self.h.trial_requests.pop(0)
        self.h.run(self.sched.handle(TrialGranted(node, granted)))

    @rule(launches=st.integers(0, 2), acquires=st.integers(0, 1))
    def commands_fail(self, launches, acquires):
        """The next commands fail to execute: the launch is refused, the request unsent."""
        self.h.fail_launches += launches
        self.h.fail_acquires += acquires

    @precondition(lambda self: not self.shut)
    @rule()
    def shutdown_cancel(self):
        """shutdown(cancel_futures=True) at any point: nothing new is submitted."""
        self.shut = True
        self.h.run(self.sched.handle(CancelQueued()))

    @rule(drop=st.sampled_from(["b", "c", None]))
    def membership(self, drop):
        nodes = {n: r for n, r in NODES.items() if n != drop}
        self.h.run(self.sched.handle(NodesChanged(nodes)))

    @rule(leaving=st.sampled_from(["a", "b", "c", "new"]))
    def churn(self, leaving):
        """A node leaves and a brand-new one (new id) joins: tables follow the live set."""
        self.joined += 1
        nodes = {n: r for n, r in self.sched.nodes.items() if not n.startswith(leaving)}
        nodes[f"new-{self.joined}"] = {"CPU": 2.0, "memory": 8e9}
        self.h.run(self.sched.handle(NodesChanged(nodes)))
        live = set(self.sched.nodes)
        table = self.sched.state.table
        assert {n for n, _ in table.load} <= live and {n for n, _ in table.paces.runtime} <= live
        assert {n for n, _ in table.paces.running} <= live and set(table.paces.last_done) <= live
        assert set(table.leases) <= live and set(self.sched.state.trials.running) <= live
        assert self.sched.state.trials.asked <= live
        assert all(a.node_id in live for a in self.sched.inflight.values())

    @rule(node=st.sampled_from(sorted(NODES)), deadline=st.sampled_from([0.0, 1.0, 5.0, 30.0]))
    def drain(self, node, deadline):
        """A drain notice (a spot preemption with a deadline, or a scale-down without)."""
        listed = {**self.sched.state.drain_listed, node: deadline and self.clock() + deadline}
        self.h.run(self.sched.handle(DrainingChanged(listed)))
        assert node not in self.sched.nodes or node in self.sched.state.draining

    @rule()
    def drains_end(self):
        """The manager lists no drain any more (they were undone, or the nodes left)."""
        self.h.run(self.sched.handle(DrainingChanged({})))

    @precondition(lambda self: self.sched.state.draining)
    @rule(data=st.data(), rejoin=st.booleans())
    def leave_on_purpose(self, data, rejoin):
        """A draining node goes (its deadline, or scale-down): nobody is charged; its
        attempts die with it (some seen as Ray's node death first) and rerun elsewhere."""
        node = data.draw(st.sampled_from(sorted(self.sched.state.draining.deadlines)))
        retries, reports = self.sched.state.stats["retries"], len(self.h.reports)
        on_node = [a for a in self.h.running.values() if a.node_id == node]
        for attempt in on_node[: data.draw(st.integers(0, len(on_node)))]:
            self.h.finish(
                attempt.attempt_id, error=RuntimeError("died"), failure_type=FailureType.NODE_DIED
            )
        self.h.run(
            self.sched.handle(
                NodesChanged({n: r for n, r in self.sched.nodes.items() if n != node})
            )
        )
        assert self.sched.state.stats["retries"] == retries
        # the deaths on the leaving node charge nobody; reports flushed now may also carry
        # earlier failures elsewhere (reports are batched), charged as they were
        deaths = [
            e
            for e in self.h.reports[reports:]
            if e.worker_id == node and e.failure_type is FailureType.NODE_DIED
        ]
        assert all(e.blame == "none" for e in deaths), deaths
        assert node not in self.sched.summary()["excluded_nodes"]
        if rejoin:  # the autoscaler brings a fresh node of that kind (a new id)
            self.joined += 1
            nodes = dict(self.sched.nodes)
            nodes[f"new-{self.joined}"] = dict(NODES[node] if node in NODES else NODES["a"])
            self.h.run(self.sched.handle(NodesChanged(nodes)))

    @invariant()
    def the_state_is_valid(self):
        """Capacity per node and shape, copies, batches, demand, bounded indexes."""
        self.sched.state.validate()
        assert sum(self.sched.demand().values()) <= 6  # max_in_flight

    @invariant()
    def a_call_state_says_where_it_is(self):
        running = {id(a.work) for a in self.sched.inflight.values()}
        backoff = {id(w) for _, _, w in self.sched.state.timers}
        for w in self.works:
            if id(w) in running:
                assert w.state == "running", w.state
            elif id(w) in backoff:
                assert w.state == "backoff", w.state
            if w.state == "done":
                assert id(w) not in running and id(w) not in backoff
            if w.future.cancelled():
                assert w.state in ("done", "queued"), w.state  # queued: not yet seen again
            elif w.future.done():
                assert w.state == "done", w.state  # resolved only by Scheduler._end

    @invariant()
    def no_call_fails_more_than_allowed(self):
        for w in self.works:
            assert w.failures <= CONFIG.max_retries

    def teardown(self):
        # drain: everything heals, every attempt succeeds, time passes
        self.h.run(self.sched.handle(DrainingChanged({})))
        self.h.run(self.sched.handle(NodesChanged(NODES)))
        self.h.run(self.sched.handle(ExclusionsChanged(Exclusions())))
        for _ in range(300):
            self.clock.advance(1.0)  # every node has the same pace: none may stand back
            for attempt_id in sorted(self.h.running):
                self.h.finish(attempt_id, value=0)
            self.h.run(self.sched.handle(Tick()))
            if self.sched.idle and not self.h.running:
                break
        for w in self.works:  # every future ends exactly once: resolved, or cancelled
            assert w.future.done(), w.task_id
            assert self.h.resolved[w.future] == (0 if w.future.cancelled() else 1)
        assert len(self.sched.state.ledger) == 0


MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SchedulerMachine.TestCase.settings = MACHINE_SETTINGS
TestSchedulerMachine = SchedulerMachine.TestCase


class BatchingMachine(SchedulerMachine):
    """The same rules with batching on, plus bursts of tiny calls and batches that die."""

    def __init__(self) -> None:
        super().__init__()
        self.sched.state.batching = True

    @precondition(lambda self: not self.shut)
    @rule(size=st.integers(2, 12))
    def burst(self, size):
        """Tiny calls of one callable, queued at once (a map): packed once paced."""
        batch = [work(len(self.works) + i, name="t") for i in range(size)]
        self.works.extend(batch)
        self.h.run(self.sched.handle(Submitted(tuple(batch))))
        self.clock.advance(0.001)
        for attempt_id in sorted(self.h.running)[:2]:
            self.h.finish(attempt_id, value=attempt_id)

    @precondition(lambda self: any(a.group for a in self.h.running.values()))
    @rule(data=st.data(), how=st.sampled_from(["crash", "placement", "launch"]))
    def batch_dies(self, data, how):
        grouped = sorted(i for i, a in self.h.running.items() if a.group is not None)
        first = self.h.running[data.draw(st.sampled_from(grouped))]
        ids = [a.attempt_id for a in first.group.attempts if a.attempt_id in self.h.running]
        for attempt_id in ids:
            self.h.running.pop(attempt_id)
        self.h.run(
            self.sched.handle(
                BatchFailed(
                    tuple(ids),
                    RuntimeError(how),
                    FailureType.WORKER_CRASH,
                    placement=how == "placement",
                    launch=how == "launch",
                )
            )
        )

    @invariant()
    def the_state_is_valid(self):
        """A batch holds one slot; its live count is its live members; one callable."""
        self.sched.state.validate()
        assert len(self.sched.inflight) <= 6
        for w in self.works:
            assert w.failures <= CONFIG.max_retries


BatchingMachine.TestCase.settings = MACHINE_SETTINGS
TestBatchingMachine = BatchingMachine.TestCase


def test_a_call_no_node_can_take_waits_aside_and_fails_after_capacity_wait(clock):
    """A call Ray refused on the one node left that fits must not hold up the calls behind
    it; it fails with CapacityError after capacity_wait_timeout unless a node returns."""
    nodes = {
        "a": {"CPU": 1.0, "special": 1.0},
        "b": {"CPU": 1.0, "special": 1.0},
        "c": {"CPU": 1.0},
    }
    h = Harness(Scheduler(CONFIG, clock=clock), clock)
    h.run(h.sched.handle(NodesChanged(nodes)))

    def special(i: int) -> Work:
        spec = CallSpec.of({"resources": {"special": 1}}, None)
        return Work(f"s-{i}", "s", None, b"", (i,), {}, spec, cf.Future())

    first, second, third = special(0), special(1), special(2)
    h.run(h.sched.handle(Submitted((first,))))
    (attempt,) = h.running.values()
    h.finish(attempt.attempt_id, error=RuntimeError("unschedulable"), placement=True)
    (moved,) = h.running.values()  # re-placed on the other special node
    h.run(h.sched.handle(Submitted((second,))))
    assert {a.node_id for a in h.running.values()} == {"a", "b"}
    h.run(h.sched.handle(NodesChanged({n: r for n, r in nodes.items() if n != moved.node_id})))
    h.run(
        h.sched.handle(Submitted((third,)))
    )  # queued behind `first`, which only the lost node could take
    (running,) = h.running.values()
    h.finish(running.attempt_id, value=1)
    assert [a.work for a in h.running.values()] == [third]  # not held up by `first`
    clock.advance(CONFIG.capacity_wait_timeout + 1)
    h.run(h.sched.handle(Tick()))
    with pytest.raises(CapacityError, match="special"):
        first.future.result(0)


def test_a_trial_granted_after_its_node_left_is_given_back(harness):
    harness.run(harness.sched.handle(ExclusionsChanged(Exclusions(half_open=(("b", 1),)))))
    for i in range(8):
        harness.run(harness.sched.handle(Submitted((work(i),))))
    assert "b" in harness.trial_requests
    harness.run(harness.sched.handle(NodesChanged({n: r for n, r in NODES.items() if n != "b"})))
    commands = harness.sched.handle(TrialGranted("b", True))
    assert [type(c).__name__ for c in commands] == ["ReleaseTrial"]
    assert "b" not in harness.sched.state.table.leases and not harness.sched.state.trials.asked


def test_a_call_cancelled_while_queued_does_not_take_its_nodes_room_with_it(clock):
    """Regression: the pick for a queued call whose future was cancelled took the node's
    room off the heap without a launch, so the next queued call waited for good."""
    sched = Scheduler(CONFIG, clock=clock, queue_depth=1)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged({"a": {"CPU": 1.0}})))
    first, *cancelled, last = (work(i) for i in range(5))
    for w in (first, *cancelled, last):
        h.run(sched.handle(Submitted((w,))))
    assert all(w.future.cancel() for w in cancelled)
    clock.advance(1.0)
    h.finish(next(iter(h.running)), value=0)
    assert [a.work for a in h.running.values()] == [last]


def test_an_event_nobody_handles_is_refused_not_dropped(clock):
    sched = Scheduler(CONFIG, clock=clock)
    with pytest.raises(AssertionError):
        sched.handle(("nodes", NODES))  # the old tagged tuple: not an event


def test_validate_names_a_broken_invariant(clock):
    h = Harness(Scheduler(CONFIG, clock=clock, queue_depth=1), clock)
    h.run(h.sched.handle(NodesChanged(NODES)))
    h.run(h.sched.handle(Submitted((work(0),))))
    (attempt,) = h.running.values()
    h.sched.state.validate()
    attempt.work.state = "queued"  # a call in flight that says it waits
    with pytest.raises(AssertionError, match="in flight but 'queued'"):
        h.sched.state.validate()
