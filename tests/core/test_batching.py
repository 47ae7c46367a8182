"""Adaptive batching in the pure scheduler (fake clock, no Ray): tiny calls of one callable
are packed, each member ends on its own, a batch that dies is split until a poison member
is alone, slow calls are never packed."""

from __future__ import annotations

import pickle

import pytest

from ray_ft.config import FTConfig
from ray_ft.core.batching import BATCH_TARGET_S, batch_size
from ray_ft.core.events import AttemptDone, BatchFailed, BatchUnrun, NodesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec
from ray_ft.failures import FailureType, TaskFailedError
from tests.scheduler_harness import Harness, work

ONE_CPU = {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}, "c": {"CPU": 1.0}}
CONFIG = FTConfig(max_retries=3, retry_delay=0.1, jitter="none", capacity_wait_timeout=30)


def make(clock, **kwargs) -> Harness:
    h = Harness(Scheduler(CONFIG, clock=clock, batching=True, **kwargs), clock)
    h.run(h.sched.handle(NodesChanged(ONE_CPU)))
    return h


def finish_all(h: Harness, runtime: float, outcome=lambda a: {"value": a.work.args[0]}) -> None:
    """Finish every running attempt (a batch's members together) after ``runtime`` per
    member, oldest batch first, until nothing runs."""
    while h.running:
        first = h.running[min(h.running)]
        members = [first] if first.group is None else list(first.group.attempts)
        h.clock.advance(runtime * len(members))
        for attempt in members:
            if attempt.attempt_id in h.running:
                h.finish(attempt.attempt_id, **outcome(attempt))


def paced(clock, n: int) -> tuple[Harness, list]:
    """A scheduler that has run one tiny call (so it knows the callable's pace and packs
    the next), with calls 1..n submitted at once; returns it and those calls."""
    h = make(clock)
    h.run(h.sched.handle(Submitted((work(0),))))
    finish_all(h, 0.0005)
    works = [work(i) for i in range(1, n + 1)]
    h.run(h.sched.handle(Submitted(tuple(works))))
    return h, works


def test_batch_size_follows_the_pace_and_spreads_the_queue():
    assert batch_size(None, 1000, 3, None) == 1  # pace unknown: learn it first
    assert batch_size(1.0, 1000, 3, None) == 1  # slow calls are never packed
    assert batch_size(0.001, 1000, 3, None) == int(BATCH_TARGET_S / 0.001)
    assert batch_size(1e-6, 30, 3, None) == 10  # every slot gets a share of the queue
    assert batch_size(1e-6, 1, 3, None) == 1  # a lone call goes alone
    assert batch_size(None, 100, 3, 8) == 8  # an explicit chunksize, whatever the pace


def test_a_lone_call_goes_at_once_and_tiny_queued_calls_are_packed(clock):
    h = make(clock)
    lone = work(0)
    h.run(h.sched.handle(Submitted((lone,))))
    assert len(h.running) == 1 and not h.batches  # no linger, no batch of one
    finish_all(h, 0.0005)
    assert lone.future.result() == 0
    works = [work(i) for i in range(1, 301)]
    h.run(h.sched.handle(Submitted(tuple(works))))
    finish_all(h, 0.0005)
    assert [w.future.result() for w in works] == list(range(1, 301))
    summary = h.sched.summary()
    assert summary["batches"] >= 3 and summary["batched_calls"] >= 250
    assert all(len({a.work.kind for a in b}) == 1 for b in h.batches)
    assert max(len(b) for b in h.batches) <= 100  # the queue spread over 3 slots
    assert h.sched.state.table.load == {}  # every batch gave its slot back once


def test_slow_calls_are_never_packed(clock):
    h = make(clock)
    works = [work(i) for i in range(30)]
    h.run(h.sched.handle(Submitted(tuple(works))))
    finish_all(h, 1.0)
    assert [w.future.result() for w in works] == list(range(30))
    assert h.sched.summary()["batches"] == 0 and not h.batches


def test_a_members_exception_is_its_own(clock):
    h, works = paced(clock, 60)

    def outcome(attempt):
        i = attempt.work.args[0]
        return {"error": KeyError(i)} if i == 7 else {"value": i}

    finish_all(h, 0.0005, outcome)
    assert isinstance(works[6].future.exception(), KeyError)
    assert [w.future.result() for w in works if w.future.exception() is None] == [
        i for i in range(1, 61) if i != 7
    ]
    assert h.sched.state.stats["retries"] == 0  # an application error is not retried by default


def test_a_poison_member_ends_alone_and_the_rest_succeed(clock):
    """A batch dies as a whole whenever the poison member is in it (its worker exits):
    halves are retried, charging nobody, until the poison runs alone and fails by itself."""
    h, works = paced(clock, 64)
    poison = works[40]
    crashed = FailureType.WORKER_CRASH
    sizes: list[int] = []  # of the batches the poison was in when they died
    for _ in range(200):
        if not h.running:
            h.clock.advance(1.0)  # retry timers
            h.run(h.sched.handle(Tick()))
            if not h.running:
                break
        first = h.running[min(h.running)]
        members = [first] if first.group is None else list(first.group.attempts)
        h.clock.advance(0.0005 * len(members))
        ids = [a.attempt_id for a in members if a.attempt_id in h.running]
        for attempt_id in ids:
            h.running.pop(attempt_id)
        if any(a.work is poison for a in members):
            sizes.append(len(ids))
            h.run(h.sched.handle(BatchFailed(tuple(ids), RuntimeError("worker died"), crashed)))
        else:
            for attempt_id, attempt in zip(ids, members, strict=True):
                h.run(h.sched.handle(AttemptDone(attempt_id, value=attempt.work.args[0])))
    assert all(w.future.done() for w in works)
    assert [w.future.result() for w in works if w is not poison] == [
        i for i in range(1, 65) if i != 41
    ]
    error = poison.future.exception()
    assert isinstance(error, TaskFailedError) and error.attempts == CONFIG.max_retries
    assert sizes[0] > 8 and sizes == sorted(sizes, reverse=True)  # halved each time
    assert sizes[-CONFIG.max_retries :] == [1] * CONFIG.max_retries  # it failed alone
    assert all(w.failures == 0 for w in works if w is not poison)  # splits charge nobody
    assert not any(e.blame == "node" for e in h.reports)
    assert h.sched.state.table.load == {}


def test_a_batch_times_out_after_timeout_per_member_and_is_split(clock):
    h = make(clock)
    timed = CallSpec.of({"timeout": 1.0}, None)
    first = work(0)
    first.spec = timed
    h.run(h.sched.handle(Submitted((first,))))
    finish_all(h, 0.0005)
    works = [work(i) for i in range(1, 31)]
    for w in works:
        w.spec = timed
    h.run(h.sched.handle(Submitted(tuple(works))))
    batch = h.batches[-1]
    # one call's timeout beyond twice the batch's expected run (members x learned pace)
    expected = 2 * 0.0005 * len(batch)
    assert batch[0].deadline == pytest.approx(batch[0].launched_at + 1.0 + expected, rel=0.2)
    h.clock.advance(1.0 * len(batch) + 0.01)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["batch_splits"] == 1
    assert all(a.attempt_id not in h.running for a in batch)  # cancelled, run again
    finish_all(h, 0.0005)
    h.clock.advance(1.0)  # single attempts launched beside the batch timed out: retried
    h.run(h.sched.handle(Tick()))
    finish_all(h, 0.0005)
    assert [w.future.result() for w in works] == list(range(1, 31))
    assert all(a.work.failures == 0 for a in batch)  # the split charged none of them


def test_an_explicit_chunksize_is_honoured(clock):
    h = make(clock)
    works = [work(i) for i in range(40)]
    for w in works:
        w.batch_cap = 8
    h.run(h.sched.handle(Submitted(tuple(works))))
    finish_all(h, 1.0)  # even slow calls: the caller asked for chunks
    assert {len(b) for b in h.batches} == {8}
    assert [w.future.result() for w in works] == list(range(40))


def test_a_failed_node_reruns_its_batches_members_and_frees_its_slot(clock):
    h, works = paced(clock, 90)
    on_a = [a for b in h.batches for a in b if a.node_id == "a"]
    assert on_a
    h.run(h.sched.handle(NodesChanged({n: r for n, r in ONE_CPU.items() if n != "a"})))
    assert all(a.attempt_id not in h.running for a in on_a)
    finish_all(h, 0.0005)
    assert [w.future.result() for w in works] == list(range(1, 91))
    assert h.sched.state.stats["retries"] == 0 and h.sched.state.table.load == {}


def test_batch_outcomes_and_placeholders_pickle():
    from ray_ft.runtime.batch_task import _Ref, _run_batch, _shippable

    assert pickle.loads(pickle.dumps(_Ref(3))) == _Ref(3)
    err = pickle.loads(pickle.dumps(_shippable(ValueError("x"))))
    assert isinstance(err, ValueError) and "remote traceback" in err.__notes__[0]
    from ray_ft.runtime.remote import callable_blob

    blob = callable_blob(lambda x, y=0: 10 // x + y)
    out = _run_batch(blob, None, [((1,), {}), ((0,), {}), ((_Ref(0),), {"y": _Ref(1)})], 5, 7)
    assert out[0] == (True, 10) and out[2] == (True, 9)
    assert out[1][0] is False and isinstance(out[1][1], ZeroDivisionError)


def test_a_batch_stops_at_its_result_budget_and_the_rest_run_again(monkeypatch):
    import numpy as np

    from ray_ft.runtime import batch_task as _batch_task
    from ray_ft.runtime.remote import callable_blob

    monkeypatch.setattr(_batch_task, "RESULT_BUDGET", 2_000_000)
    blob = callable_blob(lambda i: np.full(100_000, i, dtype=np.float64))  # 800 kB each
    out = _batch_task._run_batch(blob, None, [((i,), {}) for i in range(6)])
    ran = [o for o in out if o[0] is not None]
    assert len(ran) == 3 and all(o == (None, None) for o in out[3:])
    assert _batch_task.unpack_outcome(out[4]) == (False, None, None)


def test_members_a_batch_did_not_run_go_again_uncharged_in_smaller_batches(clock):
    h, works = paced(clock, 60)
    batch = max(h.batches, key=len)
    first = [a for a in batch if a.attempt_id in h.running]
    ran, unrun = first[:3], first[3:]
    for attempt in first:
        h.running.pop(attempt.attempt_id)
    for attempt in ran:
        h.run(h.sched.handle(AttemptDone(attempt.attempt_id, value=attempt.work.args[0])))
    before = len(h.batches)
    h.run(h.sched.handle(BatchUnrun(tuple([a.attempt_id for a in unrun]), len(ran))))
    assert h.sched.summary()["batch_unrun"] == len(unrun)
    again = [b for b in h.batches[before:] if any(a.work is unrun[0].work for a in b)]
    assert again and all(len(b) <= 3 for b in again)
    finish_all(h, 0.0005)
    assert [w.future.result() for w in works] == list(range(1, 61))
    assert all(w.failures == 0 for w in works) and h.sched.state.table.load == {}


def test_a_batchs_answer_becomes_each_wanted_members_own_event():
    from ray_ft.core.work import Attempt
    from ray_ft.runtime.results import batch_done

    members = [Attempt(work(i), "n1", None, attempt_id=i) for i in range(1, 5)]
    boom = ValueError("member 3's own")
    answer = [(True, 10), (True, 20), (False, boom), (None, None)]
    events = batch_done(members, {1, 3, 4}, answer, None)  # 2 is no longer wanted
    assert events == [
        AttemptDone(1, value=10),
        AttemptDone(3, error=boom, failure_type=FailureType.APPLICATION_ERROR),
        BatchUnrun((4,), 3),  # three of four ran
    ]
    crashed = RuntimeError("the batch's worker died")
    (failed,) = batch_done(members, {1, 4}, None, crashed)
    assert isinstance(failed, BatchFailed) and failed.attempt_ids == (1, 4)
    assert failed.error is crashed and not failed.placement
