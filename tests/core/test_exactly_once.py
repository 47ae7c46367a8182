"""Blame by origin and 'everything handed over ends exactly once', in the pure scheduler.

Fake clock, hand-made events (no Ray). The user's own exceptions are the task's whatever
their type; a command that fails to execute, a shutdown with cancel_futures at any moment,
or a killed actor worker leaves every other call ending exactly once.
"""

from __future__ import annotations

import concurrent.futures as cf
import pickle

import pytest

from ray_ft.core.attribution import UserErrorRates
from ray_ft.core.commands import Launch, Resolve
from ray_ft.core.events import Aborted, CancelQueued, LaunchFailed, NodesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from ray_ft.failures import FailureType
from tests.scheduler_harness import CONFIG, NODES, Harness, work

APP = FailureType.APPLICATION_ERROR
ONE_CPU = {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}, "c": {"CPU": 1.0}}


def drain(h: Harness, outcome) -> int:
    """Finish the oldest running attempt with ``outcome(attempt, n)`` (the keyword
    arguments of Harness.finish) until none runs; returns how many were finished."""
    count = 0
    while h.running:
        attempt_id = min(h.running)
        count += 1
        h.finish(attempt_id, **outcome(h.running[attempt_id], count))
    return count


def make(clock, nodes=ONE_CPU, **kwargs) -> Harness:
    h = Harness(Scheduler(CONFIG, clock=clock, **kwargs), clock)
    h.run(h.sched.handle(NodesChanged(nodes)))
    return h


# -- blame by origin -----------------------------------------------------------------------


def test_even_user_failures_never_make_a_node_stand_out():
    rates = UserErrorRates()
    flagged = []
    for i in range(3000):  # a service that fails 1 call in 3, on every node alike
        node = "abc"[i % 3]
        flagged.append(rates.finished(node, failed=i % 3 == (i // 3) % 3))
    assert not any(flagged)


def test_a_node_failing_ten_times_more_stands_out_and_is_forgotten_when_it_leaves():
    rates = UserErrorRates()
    flagged = set()
    for i in range(300):
        node = "abc"[i % 3]
        failed = i % 20 == 0 if node != "c" else i % 2 == 0  # 5 % elsewhere, 50 % on c
        if rates.finished(node, failed=failed):
            flagged.add(node)
    assert flagged == {"c"}
    rates.forget("c")
    assert len(rates) == 2 and not rates.stands_out("c")


def test_few_failures_are_never_enough():
    rates = UserErrorRates()
    for _ in range(20):
        rates.finished("a", failed=False)
    assert not any(rates.finished("b", failed=True) for _ in range(3))


def test_user_connection_errors_are_the_tasks_and_surface_as_raised(clock):
    """The issue's first paragraph, pure: a flaky service raises ConnectionResetError and
    TimeoutError in the user's code; the good calls finish, the user's exceptions surface
    as raised (not retried by default), no event is charged to a node."""
    h = make(clock)
    works = [work(i) for i in range(60)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))

    def service(attempt, _):
        n = attempt.work.args[0]
        if n % 3 == 0:
            return {"error": ConnectionResetError("peer reset"), "failure_type": APP}
        if n % 7 == 0:
            return {"error": TimeoutError("service slow"), "failure_type": APP}
        return {"value": n}

    i = drain(h, service)
    assert all(w.future.done() for w in works)
    good = [w for w in works if w.args[0] % 3 and w.args[0] % 7]
    assert all(w.future.result() == w.args[0] for w in good)
    assert isinstance(works[3].future.exception(), ConnectionResetError)
    assert isinstance(works[7].future.exception(), TimeoutError)
    assert i == 60  # one attempt each: a user exception is not retried unless asked
    assert not [e for e in h.reports if e.blame == "node"]
    summary = h.sched.summary()
    assert summary["user_errors"] == {"network": 20, "timeout": 6}
    assert summary["failures_by_type"] == {"application_error": 26}
    assert summary["retries"] == 0


def test_user_memory_error_asks_for_no_more_memory(clock):
    h = make(clock)
    w = work(0)
    h.run(h.sched.handle(Submitted((w,))))
    (attempt_id,) = h.running
    h.finish(attempt_id, error=MemoryError("allocation failed"), failure_type=APP)
    assert isinstance(w.future.exception(), MemoryError)
    assert h.sched.summary()["memory_raised"] == {}
    assert h.sched.summary()["user_errors"] == {"memory": 1}


def test_only_the_node_whose_user_calls_fail_far_more_is_charged(clock):
    h = make(clock)
    works = [work(i) for i in range(240)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))

    def half_fail_on_c(attempt, count):
        if (attempt.node_id == "c" and count % 2 == 0) or count % 25 == 0:
            return {"error": RuntimeError("user"), "failure_type": APP}
        return {"value": 0}

    drain(h, half_fail_on_c)
    charged = {e.worker_id for e in h.reports if e.blame == "node"}
    assert charged == {"c"}


# -- every call ends exactly once -------------------------------------------------------------


def test_a_failed_launch_ends_its_own_call_only(clock):
    h = make(clock)
    works = [work(i) for i in range(3)]
    commands = [c for w in works for c in h.sched.handle(Submitted((w,)))]
    launches = [c for c in commands if isinstance(c, Launch)]
    assert len(launches) == 3
    bad = launches[1].attempt
    h.run([c for c in commands if c is not launches[1]])
    h.running.pop(bad.attempt_id, None)
    h.run(h.sched.handle(LaunchFailed(bad.attempt_id, ValueError("num_cpus must be >= 0"))))
    with pytest.raises(RuntimeError, match="Ray refused to launch f"):
        bad.work.future.result(0)
    for attempt_id in list(h.running):
        h.finish(attempt_id, value=attempt_id)
    assert all(w.future.done() for w in works)
    assert h.sched.idle


def test_an_unpicklable_argument_says_so(clock):
    h = make(clock)
    w = work(0)
    (launch,) = [c for c in h.sched.handle(Submitted((w,))) if isinstance(c, Launch)]
    error = pickle.PicklingError("cannot pickle '_thread.lock' object")
    h.run(h.sched.handle(LaunchFailed(launch.attempt.attempt_id, error)))
    with pytest.raises(TypeError, match="pass picklable arguments"):
        w.future.result(0)


def test_cancel_futures_ends_calls_waiting_to_retry_at_once(clock):
    """shutdown(cancel_futures=True) while calls wait out a backoff: every future ends
    now (no waiting for the delay), the ledgers and batches are released, and a running
    attempt that fails afterwards ends instead of being retried."""
    config = CONFIG.replace(retry_delay=3.0, max_retry_delay=3.0, speculation=True)
    h = Harness(Scheduler(config, clock=clock), clock)
    h.run(h.sched.handle(NodesChanged(ONE_CPU)))
    works = [work(i) for i in range(7)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    first, second, _ = sorted(h.running)
    h.finish(first, error=RuntimeError("crash"), failure_type=FailureType.WORKER_CRASH)
    h.finish(second, error=RuntimeError("crash"), failure_type=FailureType.WORKER_CRASH)
    assert h.sched.pending() == 4  # two waiting to retry, two never started
    h.run(h.sched.handle(CancelQueued()))
    assert h.sched.pending() == 0
    retrying = [w for w in works if w.failures == 1]
    assert len(retrying) == 2
    for w in retrying:
        with pytest.raises(cf.CancelledError, match="cancel_futures"):
            w.future.result(0)
    never_started = [w for w in works if not w.started]
    assert len(never_started) == 2 and all(w.future.cancelled() for w in never_started)
    for running in list(h.running):
        h.finish(running, error=RuntimeError("crash"), failure_type=FailureType.WORKER_CRASH)
    assert all(w.future.done() for w in works)
    assert h.sched.idle and len(h.sched.state.ledger) == 0
    assert not any(h.sched.state.stragglers._outstanding.values())  # no batch held open


def test_an_outcome_ray_ft_cannot_take_ends_the_call_with_that_error(clock):
    h = make(clock)
    w = work(0)
    h.run(h.sched.handle(Submitted((w,))))
    (attempt_id,) = h.running
    attempt = h.running.pop(attempt_id)
    boom = RuntimeError("internal error")
    h.run(h.sched.handle(Aborted(attempt, boom)))
    assert w.future.exception(0) is boom
    assert h.sched.idle
    assert h.sched.handle(Aborted(attempt, boom)) == []  # twice: nothing more


def test_a_timed_out_actor_call_never_hands_work_to_the_actor_it_kills(clock):
    """One-slot actors (the pool): the timed-out call's actor is killed by its Cancel,
    so the call queued behind must go to another actor, not the same one in that tick."""
    actors = {"actor-1": {"CPU": 1.0}, "actor-2": {"CPU": 1.0}}
    h = make(clock, actors, queue_depth=1, cancel_kills_worker=True)
    slow, blocked, queued = work(0, timeout=1.0), work(1), work(2)
    for w in (slow, blocked, queued):
        h.run(h.sched.handle(Submitted((w,))))
    slow_attempt = next(a for a in h.running.values() if a.work is slow)
    clock.advance(1.5)
    commands = h.sched.handle(Tick())
    h.run(commands)
    launched = [c.attempt.node_id for c in commands if isinstance(c, Launch)]
    assert slow_attempt.node_id not in launched
    assert slow_attempt.node_id not in h.sched.nodes
    h.run(h.sched.handle(NodesChanged(actors)))  # a stale table still lists the killed actor
    assert slow_attempt.node_id not in h.sched.nodes
    h.run(h.sched.handle(NodesChanged({"actor-2": {"CPU": 1.0}, "actor-3": {"CPU": 1.0}})))
    assert not h.sched.state.retired  # the table dropped it: forgotten
    while not h.sched.idle:
        clock.advance(1.0)
        for attempt_id in list(h.running):
            h.finish(attempt_id, value=0)
        h.run(h.sched.handle(Tick()))
    assert all(w.future.done() for w in (slow, blocked, queued))


def test_every_resolve_is_for_a_distinct_future_after_shutdown_at_any_point(clock):
    """Shutdown with cancel_futures after every prefix of a small scenario."""
    for stop_at in range(8):
        h = make(clock, NODES)
        works = [work(i) for i in range(6)]
        steps = 0
        for w in works:
            h.run(h.sched.handle(Submitted((w,))))
        while h.running and steps < stop_at:
            attempt_id = min(h.running)
            outcome = (
                {"value": 1}
                if steps % 2
                else {"error": RuntimeError("x"), "failure_type": FailureType.WORKER_CRASH}
            )
            h.finish(attempt_id, **outcome)
            steps += 1
        h.run(h.sched.handle(CancelQueued()))
        for attempt_id in list(h.running):
            h.finish(attempt_id, value=0)
        clock.advance(10)
        h.run(h.sched.handle(Tick()))
        assert all(w.future.done() for w in works), stop_at
        assert all(n == 1 for n in h.resolved.values())
        assert not any(isinstance(c, Resolve) for c in h.sched.handle(Tick()))


def test_a_call_given_up_in_line_stays_ended_when_its_kind_asks_for_more_memory(clock):
    """A rerun call waiting in line is given up (its map() was closed); a sibling of the
    same callable then runs out of memory and the calls in line are moved to the larger
    request: the given-up call must not be put back in line and run again."""
    from ray_ft.core.events import GaveUp

    h = make(clock, nodes={"a": {"CPU": 3.0, "memory": 8e9}})
    works = [work(0), work(1), work(2)]
    h.run(h.sched.handle(Submitted(tuple(works))))
    assert len(h.running) == 3
    h.running.clear()  # node a leaves with all three: they rerun on b, one at a time
    h.run(h.sched.handle(NodesChanged({"b": {"CPU": 1.0, "memory": 8e9}})))
    (running,) = h.running.values()
    (line,) = h.sched.state.queues.values()
    waiting = line[-1]  # the last in line, behind a call that waits too
    h.run(h.sched.handle(GaveUp((waiting,))))
    assert isinstance(waiting.future.exception(0), cf.CancelledError)
    h.finish(running.attempt_id, error=MemoryError("oom"), failure_type=FailureType.OUT_OF_MEMORY)
    for _ in range(10):  # the OOM retry waits out its delay, then runs and succeeds
        clock.advance(1.0)
        h.run(h.sched.handle(Tick()))
        drain(h, lambda attempt, n: {"value": attempt.work.args[0]})
    assert [w.future.result(0) for w in works if w is not waiting] == [
        w.args[0] for w in works if w is not waiting
    ]
    assert waiting.state == "done" and h.resolved[waiting.future] == 1
    assert h.sched.idle
