"""FaultTolerantExecutor behaves like ThreadPoolExecutor, and owns timeouts and retries.

A real two-node Ray cluster on 127.0.0.1, shared by the module.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import os
import threading
import time

import pytest
import ray

from ray_ft import FailureType, FaultTolerantExecutor, TaskFailedError, classify_failure
from tests.raytools import QUICK_RETRIES, Recorder, free_cpus, wait_for

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


CLUSTER_NODES = 2  # the shared cluster fixture (tests/conftest.py) starts two nodes


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


class Boom(Exception):
    pass


def boom(msg):
    raise Boom(msg)


def test_results_like_threadpool(ex):
    assert ex.submit(square, 7).result(timeout=60) == 49
    assert ex.submit(pow, 2, 10).result(timeout=60) == 1024  # a builtin
    assert ex.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    offset = 5
    assert ex.submit(lambda: offset * 2).result(timeout=60) == 10  # a closure
    assert ex.submit(functools.partial(add, 1, c=3), 2).result(timeout=60) == 6
    assert ex.submit(add, 1, b=2, c=3).result(timeout=60) == 6  # kwargs


def test_map_keeps_order(ex):
    assert list(ex.map(square, range(50), timeout=120)) == [x * x for x in range(50)]
    assert list(ex.map(add, [1, 2], [10, 20])) == [11, 22]


def test_exception_keeps_original_type(ex):
    future = ex.submit(boom, "bad input")
    with pytest.raises(Boom, match="bad input"):
        future.result(timeout=60)
    assert ex.stats()["failures_by_type"] == {"application_error": 1}
    assert ex.stats()["retries"] == 0


def test_done_never_blocks_and_result_times_out(ex):
    future = ex.submit(time.sleep, 1.5)
    start = time.perf_counter()
    assert future.done() is False
    assert time.perf_counter() - start < 0.05
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.1)
    assert future.result(timeout=60) is None


def test_non_callable_and_shutdown(cluster):
    executor = FaultTolerantExecutor(manager=False)
    with pytest.raises(TypeError, match="not callable"):
        executor.submit(42)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)


def test_unpicklable_function_or_argument_fails_at_submit(ex):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot pickle"):
        ex.submit(lambda: lock)
    with pytest.raises(TypeError, match="could not serialize"):
        ex.submit(square, threading.Lock())
    assert ex.submit(square, 3).result(timeout=60) == 9  # the executor still works


def test_bad_options_named(cluster):
    with pytest.raises(ValueError, match=r"max_retries.*managed by ray_ft"):
        FaultTolerantExecutor(manager=False, max_retries=3)
    with pytest.raises(ValueError, match="unknown task option 'num_cpu'"):
        FaultTolerantExecutor(manager=False, num_cpu=1)
    with pytest.raises(ValueError, match="timeout"):
        FaultTolerantExecutor(manager=False).options(timeout=-1)


def test_context_manager_waits(cluster):
    with FaultTolerantExecutor(manager=False) as executor:
        futures = [executor.submit(time.sleep, 0.2) for _ in range(4)]
    assert all(f.done() for f in futures)


def test_shutdown_cancel_futures(cluster):
    executor = FaultTolerantExecutor(manager=False, queue_depth=1)
    futures = [executor.submit(time.sleep, 0.5) for _ in range(10)]
    executor.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert cancelled, "queued futures should be cancelled"
    assert all(f.done() for f in futures)


def test_ray_remote_function_accepted(ex):
    @ray.remote
    def triple(x):
        return 3 * x

    assert ex.submit(triple, 4).result(timeout=60) == 12


def hang_forever(recorder):
    ray.get(recorder.add.remote(time.time()))
    time.sleep(3600)


def test_hanging_task_is_killed_retried_then_fails(cluster):
    recorder = Recorder.remote()
    config = {**QUICK_RETRIES, "max_retries": 3}
    with FaultTolerantExecutor(config, manager=False) as ex:
        future = ex.options(timeout=3).submit(hang_forever, recorder)  # > a worker start
        with pytest.raises(TaskFailedError) as info:
            future.result(timeout=120)
        stats = ex.stats()
    err = info.value
    assert err.failure_type is FailureType.TASK_TIMEOUT and err.attempts == 3
    assert [e.failure_type for e in err.events] == [FailureType.TASK_TIMEOUT] * 3
    assert stats["timeouts"] == 3 and stats["retries"] == 2
    assert len(ray.get(recorder.get.remote())) == 3  # three real attempts ran
    wait_for(lambda: free_cpus() >= 2, timeout=60)  # the killed workers freed their CPUs


def flaky(recorder, fail_times):
    ray.get(recorder.add.remote(("flaky", time.time())))
    calls = len([x for x in ray.get(recorder.get.remote()) if x[0] == "flaky"])
    if calls <= fail_times:
        os._exit(1)  # a real worker crash
    return calls


def quick(recorder, i):
    ray.get(recorder.add.remote(("quick", time.time())))
    return i


def test_retry_delays_follow_policy_and_do_not_block(cluster):
    recorder = Recorder.remote()
    config = {
        "retry_delay": 1.0,
        "backoff_multiplier": 2.0,
        "max_retry_delay": 10.0,
        "jitter": "none",
        "max_retries": 4,
    }
    with FaultTolerantExecutor(config, manager=False) as ex:
        crashing = ex.submit(flaky, recorder, 2)
        time.sleep(0.3)
        others = [ex.submit(quick, recorder, i) for i in range(6)]
        assert [f.result(timeout=60) for f in others] == list(range(6))
        assert crashing.result(timeout=120) == 3
        stats = ex.stats()
    items = ray.get(recorder.get.remote())
    starts = [t for kind, t in items if kind == "flaky"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 3
    # delays 1 s then 2 s, plus the time to notice the crash and start a worker
    assert 1.0 <= gaps[0] < 4.0 and 2.0 <= gaps[1] < 5.0, gaps
    quick_done = max(t for kind, t in items if kind == "quick")
    assert quick_done < starts[2], "other tasks ran while the retry waited"
    assert stats["failures_by_type"] == {"worker_crash": 2}


def raise_memory_error():
    raise MemoryError("allocation failed")


def test_a_users_memory_error_is_the_tasks_own(cluster):
    """Raised by the user's code: surfaces as raised, not retried, no memory asked for."""
    with FaultTolerantExecutor({**QUICK_RETRIES, "max_retries": 2}, manager=False) as ex:
        future = ex.submit(raise_memory_error)
        with pytest.raises(MemoryError, match="allocation failed"):
            future.result(timeout=60)
        stats = ex.stats()
    assert stats["retries"] == 0 and stats["memory_raised"] == {}
    assert stats["user_errors"] == {"memory": 1}


def test_ray_out_of_memory_error_classified():
    err = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory")
    assert classify_failure(err) is FailureType.OUT_OF_MEMORY


def test_retry_exceptions_retries_application_errors(cluster):
    recorder = Recorder.remote()

    def sometimes(rec):
        ray.get(rec.add.remote(1))
        if len(ray.get(rec.get.remote())) < 2:
            raise KeyError("transient")
        return "ok"

    with FaultTolerantExecutor(
        {**QUICK_RETRIES, "retry_exceptions": (KeyError,)}, manager=False
    ) as ex:
        assert ex.submit(sometimes, recorder).result(timeout=60) == "ok"
        assert ex.stats()["retries"] == 1


def test_unschedulable_shape_fails_after_capacity_wait(cluster):
    config = {**QUICK_RETRIES, "capacity_wait_timeout": 1.0}
    with FaultTolerantExecutor(config, manager=False) as ex:
        future = ex.options(num_gpus=1).submit(square, 2)
        with pytest.raises(Exception, match="no usable node could run tasks needing"):
            future.result(timeout=60)


def test_option_specs_are_cached_not_accumulated(ex):
    view = ex.options(num_cpus=1)
    futures = [ex.submit(square, i) for i in range(50)] + [view.submit(square, 2)]
    assert [f.result(timeout=60) for f in futures[:3]] == [0, 1, 4]
    assert len(ex._specs) <= 2  # one per options object, not one per call
