"""Blame by where an error was raised, and every call ending exactly once, on a real
3-node cluster (1 CPU each) with the real manager actor.

An objective whose own service fails (ConnectionResetError, TimeoutError, MemoryError
raised by the user's code) must behave as in plain Ray: good calls finish, the user's
exceptions surface as raised, and no node is excluded for it. Faults injected into one
command of the executor's loop leave every other call resolved.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import time

import numpy as np
import pytest
import ray

from ray_ft import FailureType, FaultTolerantActorPool, FaultTolerantExecutor, TaskFailedError
from ray_ft.core.events import AttemptDone
from ray_ft.runtime.manager_client import ActorManagerClient
from ray_ft.runtime.workers import TaskWorkers
from tests.raytools import wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

FAST = {"retry_delay": 0.05, "max_retry_delay": 0.2, "jitter": "none"}


def busy(ms: float) -> None:
    """Real CPU work (numpy), not a sleep."""
    end = time.perf_counter() + ms / 1000
    x = np.arange(2000, dtype=np.float64)
    while time.perf_counter() < end:
        x = np.sqrt(x * x + 1.0)


def call_service(i: int) -> int:
    """An objective whose simulator service is flaky, the same way on every node."""
    busy(10)
    if i % 3 == 0:
        raise ConnectionResetError(f"simulator service reset the connection (call {i})")
    if i % 7 == 0:
        raise TimeoutError(f"simulator service timed out (call {i})")
    if i % 11 == 0:
        raise MemoryError(f"could not allocate the simulation grid (call {i})")
    return i


def where(i: int) -> str:
    busy(20)
    return ray.get_runtime_context().get_node_id()


def test_user_exceptions_are_the_tasks_and_exclude_no_node(nodes):
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    config = {**FAST, "max_retries": 2}
    with FaultTolerantExecutor(config) as ex:
        futures = [ex.submit(call_service, i) for i in range(60)]
        _, pending = cf.wait(futures, timeout=120)
        assert not pending
        stats = ex.stats()
    for i, future in enumerate(futures):
        if i % 3 == 0:
            assert isinstance(future.exception(), ConnectionResetError)
        elif i % 7 == 0:
            assert isinstance(future.exception(), TimeoutError)
        elif i % 11 == 0:
            assert isinstance(future.exception(), MemoryError)
        else:
            assert future.result() == i
    assert stats["excluded_nodes"] == []
    assert stats["memory_raised"] == {}  # a user's MemoryError asks for no more memory
    assert stats["retries"] == 0  # not retried unless retry_exceptions says so
    assert stats["user_errors"] == {"network": 20, "timeout": 6, "memory": 4}
    assert set(stats["failures_by_type"]) == {"application_error"}
    history = ray.get(ex.manager.get_state.remote())["history"]
    assert history and not [e for e in history if e["blame"] == "node"]
    # a second executor right after runs on every node
    with FaultTolerantExecutor(config) as again:
        ran_on = set(again.map(where, range(30), timeout=120))
    assert ran_on == alive


def test_retried_user_errors_stay_the_tasks(nodes):
    """retry_exceptions makes a user's ConnectionError worth retrying; still no node's."""
    config = {**FAST, "max_retries": 3, "retry_exceptions": (ConnectionError,)}
    with FaultTolerantExecutor(config) as ex:
        futures = [ex.submit(call_service, i) for i in range(30)]
        cf.wait(futures, timeout=120)
        stats = ex.stats()
    assert all(isinstance(futures[i].exception(), ConnectionResetError) for i in (3, 9, 27))
    assert stats["retries"] == 20  # ten calls x two retries
    assert stats["excluded_nodes"] == []


def failing_on(bad_node: str, i: int) -> int:
    busy(5)
    here = ray.get_runtime_context().get_node_id()
    if (here == bad_node and i % 2 == 0) or i % 20 == 0:
        raise RuntimeError(f"user code failed (call {i})")
    return i


def test_only_the_node_whose_user_calls_fail_far_more_is_suspected(nodes):
    bad = nodes.list_all_nodes()[1].node_id
    with FaultTolerantExecutor({**FAST, "max_retries": 1}) as ex:
        futures = [ex.submit(failing_on, bad, i) for i in range(240)]
        cf.wait(futures, timeout=180)
        history = ray.get(ex.manager.get_state.remote())["history"]
    assert all(f.done() for f in futures)
    charged = {e["worker_id"] for e in history if e["blame"] == "node"}
    assert charged == {bad}


# -- every call ends exactly once, whatever one command hits ------------------------------


class Faulty(TaskWorkers):
    """Ray tasks, with a fault injected into one kind of command of the real loop."""

    def __init__(self, fault: str) -> None:
        super().__init__(None)
        self.fault = fault

    def start(self, work, worker_id):
        if self.fault == "launch" and work.args and work.args[0] == 7:
            msg = "injected launch fault"
            raise RuntimeError(msg)
        return super().start(work, worker_id)

    def stop(self, ref, attempt):
        if self.fault == "cancel":
            msg = "injected cancel fault"
            raise RuntimeError(msg)
        super().stop(ref, attempt)

    def node_events(self, events):
        if self.fault == "report":
            msg = "injected report fault"
            raise RuntimeError(msg)
        return events


def sometimes_slow_or_failing(i: int, slow: bool) -> int:
    busy(30)
    if i % 5 == 0:
        raise ValueError(f"bad input {i}")
    if slow and i % 9 == 4:
        busy(3000)  # past its timeout: cancelled and retried (fails the same way)
    return i


@pytest.mark.parametrize("fault", ["launch", "cancel", "report", "outcome"])
def test_a_fault_in_one_command_leaves_every_other_call_resolved(nodes, fault):
    config = {**FAST, "max_retries": 2}
    if fault == "cancel":  # timeouts make the cancels; elsewhere they would only add noise
        config["task_timeout"] = 1.5
    with FaultTolerantExecutor(config, manager=False, _workers=Faulty(fault)) as ex:
        if fault == "outcome":  # ray_ft itself fails taking one attempt's outcome
            take = ex._loop.sched.handle

            def handle(*events):
                if any(isinstance(e, AttemptDone) and e.value == 8 for e in events):
                    msg = "injected scheduler fault"
                    raise RuntimeError(msg)
                return take(*events)

            ex._loop.sched.handle = handle
        futures, refused = {}, []
        for i in range(24):
            try:
                futures[i] = ex.submit(sometimes_slow_or_failing, i, fault == "cancel")
            except RuntimeError:
                refused.append(i)
        _, pending = cf.wait(list(futures.values()), timeout=120)
        assert not pending, f"{len(pending)} calls never ended"
    for i, future in futures.items():
        error = future.exception()
        if fault == "cancel" and isinstance(error, TaskFailedError):
            # a cancel that never happened leaves a node busy: calls queued behind it
            # in Ray may time out too; they still end, which is what is tested here
            assert error.failure_type is FailureType.TASK_TIMEOUT
        elif fault == "launch" and i == 7:
            assert "injected launch fault" in repr(error.__cause__)
        elif fault == "outcome" and i == 8:
            assert "injected scheduler fault" in str(error)
        elif i % 5 == 0:
            assert isinstance(error, ValueError)
        elif fault == "cancel" and i % 9 == 4:
            assert error is not None  # timed out twice
        else:
            assert future.result() == i
    assert refused in ([], [7]) and (fault == "launch" or not refused)


def crash(i: int) -> int:
    if i % 2 == 0:
        os._exit(1)  # the worker dies: retried after the backoff
    busy(20)
    return i


def test_shutdown_with_cancel_futures_ends_calls_waiting_to_retry_at_once(nodes):
    config = {"retry_delay": 30.0, "max_retry_delay": 30.0, "jitter": "none", "max_retries": 3}
    ex = FaultTolerantExecutor(config, manager=False)
    futures = [ex.submit(crash, i) for i in range(6)]
    wait_for(lambda: ex.stats()["retries"] >= 3 and ex.stats()["in_flight"] == 0, timeout=90)
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 20  # not the 30 s backoff
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures[1::2]] == [1, 3, 5]
    for f in futures[0::2]:
        with pytest.raises(cf.CancelledError):
            f.result()
    stats = ex.stats()
    assert stats["cancelled"] == 3 and stats["pending"] == 0


@ray.remote(num_returns=2)
def two_results():
    return 1, 2


@ray.remote
def generate():
    yield 1


def test_calls_one_result_cannot_carry_and_bad_amounts_are_refused_at_submit(cluster):
    with FaultTolerantExecutor(manager=False) as ex:
        for fn in (two_results, generate):
            with pytest.raises(ValueError, match="num_returns=1"):
                ex.submit(fn)
        for options, named in [
            ({"num_cpus": -1}, "num_cpus=-1"),
            ({"num_gpus": float("nan")}, "num_gpus=nan"),
            ({"memory": "lots"}, "memory='lots'"),
            ({"resources": {"TPU": -2}}, "resources\\['TPU'\\]=-2"),
        ]:
            with pytest.raises(ValueError, match=named):
                ex.options(**options).submit(pow, 2, 3)
        assert ex.submit(pow, 2, 3).result(timeout=60) == 8  # nothing was lost


def test_a_manager_that_stops_answering_is_reported_once(cluster, caplog):
    @ray.remote(num_cpus=0)
    class Gone:
        def excluded_nodes(self, token=None):
            return {}

    handle = Gone.remote()
    ray.get(handle.excluded_nodes.remote())
    client = ActorManagerClient(handle, refresh_s=0.0)
    ray.kill(handle, no_restart=True)
    with caplog.at_level(logging.WARNING, logger="ray_ft.runtime.manager_client"):
        for _ in range(40):
            client.poll()
            time.sleep(0.06)
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and not client.reachable


class Slow:
    def work(self, seconds: float) -> str:
        busy(seconds * 1000)
        return "done"


def test_a_timed_out_actor_call_never_costs_an_innocent_call(nodes):
    """The timed-out call's actor is killed: the call queued behind it goes to another
    actor (or waits for the replacement), never to the actor being killed."""
    config = {**FAST, "max_retries": 2, "task_timeout": 3.0}
    with FaultTolerantActorPool(Slow, size=2, config=config, num_cpus=0) as pool:
        wait_for(lambda: pool.stats()["live"] == 2, timeout=60)
        hung = pool.submit(Slow.work, 30.0)
        innocents = [pool.submit(Slow.work, 0.05) for _ in range(6)]
        assert [f.result(timeout=120) for f in innocents] == ["done"] * 6
        with pytest.raises(Exception, match=r"task_timeout"):
            hung.result(timeout=120)
        stats = pool.stats()
    assert stats["retries"] == 1  # the hung call's own retry; no innocent call's
    assert set(stats["failures_by_type"]) == {"task_timeout"}


def test_actor_table_survives_concurrent_callers(nodes):
    import threading

    with FaultTolerantActorPool(Slow, size=3, config=FAST, num_cpus=0) as pool:
        errors = []

        def hammer():
            try:
                for _ in range(30):
                    pool.stats()
                    pool.submit(Slow.work, 0.0).result(timeout=60)
            except Exception as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors
        assert len(pool._workers.actors) <= 3
