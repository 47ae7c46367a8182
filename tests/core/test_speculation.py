"""Stragglers and hungry tasks in the pure scheduler: backups, first result wins, OOM
retries ask for more memory. A fake clock, hand-made events, no Ray."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from ray_ft.config import FTConfig
from ray_ft.core.commands import Cancel
from ray_ft.core.events import AttemptDone, NodesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.speculation import Cohort, Stragglers
from ray_ft.core.work import Attempt, CallSpec, Work
from ray_ft.failures import FailureType
from tests.scheduler_harness import Harness

GiB = 2.0**30
NODES = {
    "a": {"CPU": 2.0, "memory": 8 * GiB},
    "b": {"CPU": 1.0, "memory": 4 * GiB},
    "c": {"CPU": 1.0, "memory": 4 * GiB},
}
SPECULATING = FTConfig(retry_delay=0.5, max_retry_delay=2.0, jitter="none", speculation=True)


def work(i: int, **options) -> Work:
    spec = CallSpec.of(options, None)
    return Work(f"f-{i}", "f", None, b"", (i,), {}, spec, cf.Future())


def harness(clock, config: FTConfig = SPECULATING) -> Harness:
    h = Harness(Scheduler(config, clock=clock, queue_depth=4), clock)
    h.run(h.sched.handle(NodesChanged(NODES)))
    return h


def straggler(h: Harness, clock, count: int = 4) -> tuple[list[Work], int]:
    """``count`` calls fill the slots; all but the one on node b finish in 0.5 s."""
    works = [work(i) for i in range(count)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    clock.advance(0.5)
    slow = next(a for a in h.running.values() if a.node_id == "b")
    for attempt_id in [i for i, a in h.running.items() if a.node_id != "b"]:
        h.finish(attempt_id, value=h.running[attempt_id].work.task_id)
    return works, slow.attempt_id


def backed_up(h: Harness, clock) -> tuple[int, Attempt]:
    """The straggler of :func:`straggler` once its backup runs: (its attempt id, backup)."""
    _, slow_id = straggler(h, clock)
    clock.advance(1.0)
    h.run(h.sched.handle(Tick()))
    return slow_id, next(a for a in h.running.values() if a.backup)


def test_a_straggler_gets_one_backup_elsewhere_and_the_backup_wins(clock):
    h = harness(clock)
    works, slow_id = straggler(h, clock)
    clock.advance(0.4)  # 0.9 s: under speculation_min_runtime (1.0)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 0
    clock.advance(0.2)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 1
    backup = next(a for a in h.running.values() if a.backup)
    assert backup.node_id != "b" and backup.work is h.running[slow_id].work
    clock.advance(0.5)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 1  # never a second backup
    commands = h.sched.handle(AttemptDone(backup.attempt_id, value="won"))
    assert [c.attempt.attempt_id for c in commands if isinstance(c, Cancel)] == [slow_id]
    h.run(commands)
    assert backup.work.future.result(0) == "won"
    assert h.sched.handle(AttemptDone(slow_id, value="late")) == []  # the loser's result is dropped
    summary = h.sched.summary()
    assert (summary["speculated"], summary["speculation_wins"], summary["retries"]) == (1, 1, 0)
    assert all(w.future.done() for w in works) and h.sched.idle


def test_the_original_may_still_win(clock):
    h = harness(clock)
    slow_id, backup = backed_up(h, clock)
    commands = h.sched.handle(AttemptDone(slow_id, value="original"))
    assert [c.attempt for c in commands if isinstance(c, Cancel)] == [backup]
    h.run(commands)
    assert backup.work.future.result(0) == "original"
    assert h.sched.summary()["speculation_wins"] == 0


def test_a_copy_failing_while_the_other_runs_counts_no_retry(clock):
    h = harness(clock)
    slow_id, backup = backed_up(h, clock)
    crash = {"error": RuntimeError("died"), "failure_type": FailureType.WORKER_CRASH}
    h.finish(backup.attempt_id, **crash)
    assert backup.work.failures == 0 and h.sched.state.stats["retries"] == 0
    assert h.reports[-1].blame == "none"
    h.finish(slow_id, value="original")
    assert backup.work.future.result(0) == "original"


def test_a_timed_out_original_leaves_the_backup_running(clock):
    h = harness(clock)
    works = [work(i, timeout=3.0) for i in range(4)]
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    clock.advance(0.5)
    slow = next(a for a in h.running.values() if a.node_id == "b")
    for attempt_id in [i for i, a in h.running.items() if a.node_id != "b"]:
        h.finish(attempt_id, value=1)
    clock.advance(1.0)
    h.run(h.sched.handle(Tick()))
    backup = next(a for a in h.running.values() if a.backup)
    clock.advance(2.0)  # the original's deadline passes; the backup's does not
    h.run(h.sched.handle(Tick()))
    assert slow.attempt_id not in h.sched.inflight and backup.attempt_id in h.sched.inflight
    assert slow.work.failures == 0
    h.finish(backup.attempt_id, value=2)
    assert slow.work.future.result(0) == 2


def test_no_backup_while_first_attempts_wait_or_before_the_quantile(clock):
    h = harness(clock)
    for i in range(8):  # 4 slots: 4 first attempts wait
        h.run(h.sched.handle(Submitted((work(i),))))
    clock.advance(5.0)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 0
    h2 = harness(clock)
    for i in range(4):
        h2.run(h2.sched.handle(Submitted((work(i),))))
    clock.advance(0.5)
    first = next(iter(h2.running))
    h2.finish(first, value=1)  # 1 of 4 done: below the 0.75 quantile
    clock.advance(5.0)
    h2.run(h2.sched.handle(Tick()))
    assert h2.sched.state.stats["speculated"] == 0


def test_speculation_is_off_unless_asked_for(clock):
    h = harness(clock, SPECULATING.replace(speculation=None))
    straggler(h, clock)
    clock.advance(5.0)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 0
    h = harness(clock, SPECULATING.replace(speculation=None))
    works = [work(i, speculation=True) for i in range(4)]  # per call: options(speculation=True)
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    clock.advance(0.5)
    for attempt_id in [i for i, a in h.running.items() if a.node_id != "b"]:
        h.finish(attempt_id, value=1)
    clock.advance(1.0)
    h.run(h.sched.handle(Tick()))
    assert h.sched.state.stats["speculated"] == 1


def test_out_of_memory_retry_asks_for_twice_its_share_capped_at_the_largest_node(clock):
    h = harness(clock, SPECULATING.replace(speculation=False))
    w = work(0)
    h.run(h.sched.handle(Submitted((w,))))
    (attempt,) = h.running.values()
    share = NODES[attempt.node_id]["memory"] / NODES[attempt.node_id]["CPU"]
    oom = {"error": MemoryError(), "failure_type": FailureType.OUT_OF_MEMORY}
    h.finish(attempt.attempt_id, **oom)
    assert w.spec.options["memory"] == min(2 * share, 8 * GiB)
    assert w.events[-1].memory_request is None  # it had asked for none
    clock.advance(2.0)
    h.run(h.sched.handle(Tick()))
    (retry,) = h.running.values()  # on the one node with room for it (alone there)
    assert retry.work.shape.slots_on(NODES[retry.node_id]) == 1


def test_out_of_memory_retry_doubles_an_explicit_request(clock):
    h = harness(clock, SPECULATING.replace(speculation=False))
    w = work(0, memory=int(GiB), timeout=30.0, name="mine")
    h.run(h.sched.handle(Submitted((w,))))
    (attempt,) = h.running.values()
    h.finish(attempt.attempt_id, error=MemoryError(), failure_type=FailureType.OUT_OF_MEMORY)
    assert w.spec.options["memory"] == 2 * GiB
    assert (w.spec.timeout, w.spec.name) == (30.0, "mine")  # ray_ft's own options kept
    assert "timeout" not in w.spec.options
    assert w.events[-1].memory_request == GiB
    for _ in range(3):  # at the cap it stays there
        w.spec = h.sched.state.memory.more_memory(w, "a")
    assert w.spec.options["memory"] == 8 * GiB


def test_batches_start_when_a_callable_is_idle_and_budget_is_at_least_one():
    stragglers = Stragglers(SPECULATING)
    first = stragglers.submitted("f")
    assert stragglers.submitted("f") is first
    stragglers.finished("f", first, 1.0)
    assert first.threshold(SPECULATING) is None  # 1 of 2 done
    stragglers.finished("f", first, 3.0)
    assert first.threshold(SPECULATING) == pytest.approx(1.5 * 2.0)
    assert stragglers.submitted("f") is not first  # f was idle: a new batch
    assert stragglers.budget(free_slots=2, backups_running=0) == 1
    assert stragglers.budget(free_slots=8, backups_running=1) == 2
    assert stragglers.budget(free_slots=0, backups_running=1) == 0
    assert Cohort().threshold(SPECULATING) is None


def test_bad_speculation_settings_are_refused():
    for bad in (
        {"speculation": "yes"},
        {"speculation_quantile": 1.5},
        {"speculation_max_fraction": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FTConfig.from_dict(bad)


def test_an_out_of_memory_callable_gives_its_queued_and_later_calls_the_same_memory(clock):
    h = harness(clock, SPECULATING.replace(speculation=False))
    works = [work(i) for i in range(6)]  # 4 slots: 2 queue
    for w in works:
        h.run(h.sched.handle(Submitted((w,))))
    first = next(a for a in h.running.values() if a.node_id == "b")
    h.finish(first.attempt_id, error=MemoryError(), failure_type=FailureType.OUT_OF_MEMORY)
    given = 2 * NODES["b"]["memory"]
    queued = [w for w in works if w.started is False]
    assert queued and all(w.spec.options["memory"] == given for w in queued)
    later = work(9)
    h.run(h.sched.handle(Submitted((later,))))
    assert later.spec.options["memory"] == given
    assert h.sched.summary()["memory_raised"] == {"f": given}
    other = Work("g-1", "g", None, b"", (), {}, CallSpec.of({}, None), cf.Future())
    h.run(h.sched.handle(Submitted((other,))))
    assert "memory" not in other.spec.options  # another callable is not touched


def test_a_node_whose_copy_lost_learns_its_pace_and_stands_back_until_it_is_old_news(clock):
    h = harness(clock)
    _, backup = backed_up(h, clock)
    clock.advance(0.5)
    h.finish(backup.attempt_id, value=1)  # the loser on b ran 2 s: b's pace is >= 2 s
    assert h.sched.state.table.paces.runtime[("b", "f")] >= 2.0
    for i in range(10, 18):  # the next batch: a and c clear it before b would finish one
        h.run(h.sched.handle(Submitted((work(i),))))
    assert "b" not in {a.node_id for a in h.running.values()}
    while h.running:
        clock.advance(0.5)
        for attempt_id in list(h.running):
            h.finish(attempt_id, value=0)
    clock.advance(11.0)  # b's pace is old news: it may have recovered
    for i in range(20, 28):
        h.run(h.sched.handle(Submitted((work(i),))))
    assert "b" in {a.node_id for a in h.running.values()}
    assert sum(a.node_id == "b" for a in h.running.values()) == 1  # one try, not one per slot
