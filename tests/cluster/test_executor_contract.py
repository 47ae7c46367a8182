"""The concurrent.futures.Executor contract to the letter, on a real local Ray.

Written for this project after the cases of CPython's own executor tests
(Lib/test/test_concurrent_futures.py) that a Ray-backed pool broke: keyword names,
references freed (CPython issues 16284 and 14406), map() timing out (gh-95166), exit
with pending work (gh-83386), and the stdlib pools' constructor arguments.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import json
import os
import subprocess
import sys
import textwrap
import time
import weakref

import pytest
import ray

from ray_ft import FaultTolerantActorPool, FaultTolerantExecutor
from tests.raytools import QUICK_RETRIES, wait_for

pytestmark = pytest.mark.cluster

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


CLUSTER_NODES = 2  # the shared cluster fixture (tests/conftest.py) starts two nodes


def echo(*args, **kwargs):
    return args, kwargs


class Box:
    """A result, or a callable's instance, that takes a weak reference."""

    def __init__(self, value=0):
        self.value = value

    def times(self, x):
        return self.value * x


def make_box(value):
    return Box(value)


def sleep_then_touch(path, seconds):
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")
    return seconds


_INIT_VALUE = None


def remember(path, value):
    global _INIT_VALUE
    _INIT_VALUE = value
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def initialized(_):
    return _INIT_VALUE


# -- keywords of any name ------------------------------------------------------------------


def test_keywords_of_any_name_reach_the_callable(ex):
    assert ex.submit(echo, 1, self=2, fn=3).result(timeout=60) == ((1,), {"self": 2, "fn": 3})
    ref = ray.put(41)
    # an ObjectRef given by keyword is resolved, as Ray does for f.remote(x=ref)
    assert ex.submit(echo, self=ref, blob=1).result(timeout=60) == ((), {"self": 41, "blob": 1})
    # many tiny calls are packed into batch tasks: the names survive there too
    futures = [ex.submit(echo, i, self=i, head=-i) for i in range(200)]
    assert [f.result(timeout=120) for f in futures] == [
        ((i,), {"self": i, "head": -i}) for i in range(200)
    ]


class Keywords:
    def echo(this, *args, **kwargs):
        return args, kwargs


def test_keywords_of_any_name_reach_an_actor_method(cluster):
    with FaultTolerantActorPool(Keywords, size=1, config=QUICK_RETRIES, manager=False) as pool:
        assert pool.submit(Keywords.echo, 1, self=2).result(timeout=60) == ((1,), {"self": 2})
        assert pool.submit("echo", fn=3).result(timeout=60) == ((), {"fn": 3})


def test_a_remote_function_cannot_take_self_and_says_why(ex):
    remote = ray.remote(echo)
    with pytest.raises(ValueError, match="plain Python function"):
        ex.submit(remote, self=1)


# -- references are freed -------------------------------------------------------------------


def _closure_over(held):
    def captures(x):
        return held.value + x  # a closure: what it captured

    return captures, weakref.ref(held)


def test_a_callable_is_not_kept_alive_after_its_call(ex):
    box = Box(3)
    instance = weakref.ref(box)
    assert ex.submit(box.times, 2).result(timeout=60) == 6  # a bound method: its instance
    captures, closure = _closure_over(Box(5))
    assert ex.submit(captures, 1).result(timeout=60) == 6
    del box, captures
    gc.collect()
    assert instance() is None
    assert closure() is None


@pytest.mark.parametrize("pool", [False, True], ids=["executor", "actor pool"])
def test_a_shut_down_executor_is_freed_by_its_users_del(cluster, pool):
    """After shutdown() no thread of ray_ft, and no reference cycle, holds the executor's
    loop: the user's ``del`` frees it, and its ObjectRefs, on the user's thread. Freed on a
    thread of ray_ft while the user's ray.shutdown() ran, those refs ended the process with
    status 1 (Ray's core worker was being destroyed): CI's compat lane did, and so did 2 runs
    of 3 of ``pool.shutdown(); del pool; ray.shutdown()``. The watch thread held the loop
    for up to half a second after it went idle (runtime/busy.py)."""
    gc.disable()  # freed by its reference count, at once, or this fails
    try:
        if pool:
            ex = FaultTolerantActorPool(Box, size=1, config=QUICK_RETRIES)
            futures = [ex.submit("times", i) for i in range(3)]
        else:
            ex = FaultTolerantExecutor(QUICK_RETRIES)  # with the manager: a link, its refs
            futures = [ex.submit(time.sleep, 0.3) for _ in range(3)]
        for future in futures:
            future.result(timeout=60)
        ex.shutdown(wait=True)
        loop = weakref.ref(ex._loop)
        del ex, futures, future
        assert loop() is None
    finally:
        gc.enable()


def test_the_callable_cache_still_hits_for_a_live_callable(ex):
    from ray_ft.runtime import remote as _dispatch

    box = Box(2)
    assert _dispatch.callable_blob(box.times) is _dispatch.callable_blob(box.times)
    other = Box(2)
    assert _dispatch.callable_blob(other.times) is not _dispatch.callable_blob(box.times)


def test_map_holds_no_result_it_has_yielded(ex):
    results = ex.map(make_box, range(3), timeout=120)
    first = next(results)
    ref = weakref.ref(first)
    assert first.value == 0
    del first
    gc.collect()
    assert ref() is None
    assert [b.value for b in results] == [1, 2]


def test_map_that_times_out_stops_the_call_it_waited_on(ex, tmp_path):
    path = tmp_path / "finished"
    results = ex.map(sleep_then_touch, [str(path)], [30], timeout=0.5)
    wait_for(lambda: ex.stats()["submitted"] == 1, timeout=30)
    start = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        next(results)
    ex.shutdown(wait=True)  # does not wait the 30 s out: the call was stopped
    assert time.monotonic() - start < 25
    assert ex.stats()["cancelled"] == 1
    assert not path.exists()


def test_a_closed_map_gives_up_its_calls(ex, tmp_path):
    """Once advanced, a closed map() gives up what it has not handed out."""
    paths = [str(tmp_path / f"f{i}") for i in range(3)]
    results = ex.map(sleep_then_touch, paths, [0, 30, 30])
    assert next(results) == 0
    results.close()
    ex.shutdown(wait=True)
    stats = ex.stats()
    assert stats["cancelled"] == 2
    assert stats["succeeded"] == 1
    assert [os.path.exists(p) for p in paths] == [True, False, False]


@pytest.mark.parametrize("drop", ["unused", "del", "close"])
def test_a_map_never_advanced_runs_its_calls_as_the_stdlib_does(cluster, tmp_path, drop):
    """``ex.map(f, xs)`` with its iterator unused fires the work, and shutdown(wait=True)
    waits for it (ThreadPoolExecutor does; CPython issue 11777)."""
    paths = [str(tmp_path / f"m{i}") for i in range(10)]
    ex = FaultTolerantExecutor(QUICK_RETRIES, manager=False)
    if drop == "unused":
        ex.map(sleep_then_touch, paths, [0.2] * 10)  # the iterator is collected at once
    else:
        results = ex.map(sleep_then_touch, paths, [0.2] * 10)
        if drop == "del":
            del results
            gc.collect()
        else:
            results.close()
    ex.shutdown(wait=True)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    assert ex.stats()["succeeded"] == 10 and ex.stats()["cancelled"] == 0


# -- exit waits for pending work -----------------------------------------------------------

_SCRIPT = """
import sys, time
import ray
sys.path.insert(0, {root!r})
from ray_ft import FaultTolerantExecutor
from tests.cluster.test_executor_contract import sleep_then_touch

ray.init(address={address!r}, namespace="ray_ft_exit_test")
ex = FaultTolerantExecutor({{"batching": False}}, manager=False)
future = ex.submit(sleep_then_touch, {path!r}, 3)
while not future.running():
    time.sleep(0.05)
{ending}
print("script ends", flush=True)
"""


def _run_driver(script: str) -> subprocess.CompletedProcess[str]:
    """A driver script of its own (this checkout on its path), run to its end."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": _ROOT},
    )


_SHUTDOWN_NO_WAIT = """
start = time.monotonic()
ex.shutdown(wait=False)
print(f"shutdown returned after {time.monotonic() - start:.3f} s", flush=True)
assert not future.done()
"""


@pytest.mark.parametrize("ending", ["shutdown(wait=False)", "no shutdown"])
def test_a_script_that_ends_lets_its_pending_calls_finish(cluster, tmp_path, ending):
    path = tmp_path / "side-effect"
    script = _SCRIPT.format(
        root=_ROOT,
        address=cluster.address,
        path=str(path),
        ending=_SHUTDOWN_NO_WAIT if ending.startswith("shutdown") else "",
    )
    proc = _run_driver(script)
    assert proc.returncode == 0, proc.stderr
    assert "script ends" in proc.stdout
    assert path.read_text() == "done"  # the call ran to its end before the driver left
    assert "waiting for them at most 600 s" in proc.stderr  # said once
    assert proc.stderr.count("ray_ft: Python is exiting") == 1
    if ending.startswith("shutdown"):
        returned = float(proc.stdout.split("shutdown returned after ")[1].split()[0])
        assert returned < 1.0  # at once, while the 3 s call still runs


_RAY_SHUT_DOWN = """
import json, sys, time
import ray
sys.path.insert(0, {root!r})
from ray_ft import FaultTolerantActorPool, FaultTolerantExecutor


class Sleeper:
    def sleep(self, seconds):
        time.sleep(seconds)


ray.init(address={address!r}, namespace="ray_ft_exit_test")
if {pool!r}:  # the pool's actors: a kill after the shutdown would start a new Ray
    ex = FaultTolerantActorPool(Sleeper, size=2)
    call = Sleeper.sleep
else:
    ex = FaultTolerantExecutor({{"batching": False}})  # the manager too: Ray calls
    call = time.sleep
futures = [ex.submit(call, 3) for _ in range(4)]
while not any(f.running() for f in futures):
    time.sleep(0.05)
ray.shutdown()
outcomes = []
for future in futures:
    try:
        outcomes.append(repr(future.result(timeout=60)))
    except Exception as exc:
        outcomes.append(f"{{type(exc).__name__}}: {{exc}}")
try:
    ex.submit(call, 0)
    refused = ""
except RuntimeError as exc:
    refused = str(exc)
ex.shutdown(wait=True)
print(json.dumps({{"outcomes": outcomes, "refused": refused, "ray": ray.is_initialized()}}))
"""


@pytest.mark.parametrize("pool", [False, True], ids=["executor", "actor pool"])
def test_ray_shut_down_under_a_busy_executor_fails_its_calls_and_starts_no_ray(cluster, pool):
    """ray.shutdown() while calls run: plain Ray's ray.get raises, so every pending call
    fails at once with an error that names the fix; no new Ray is started behind the user
    (every Ray API auto-inits), and the process neither hangs nor dies. Before: the calls
    never ended, and a Ray call of the loop's during the shutdown ended the process."""
    script = _RAY_SHUT_DOWN.format(root=_ROOT, address=cluster.address, pool=pool)
    proc = _run_driver(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(said["outcomes"]) == 4, said
    for outcome in said["outcomes"]:
        assert outcome.startswith("RuntimeError: Ray was shut down (ray.shutdown())"), said
        assert "Call executor.shutdown() before ray.shutdown()" in outcome, said
    assert "create a new FaultTolerantExecutor after ray.init()" in said["refused"], said
    assert said["ray"] is False  # no Ray started anew


# -- the stdlib pools' constructor arguments ----------------------------------------------


def test_max_workers_is_max_in_flight(cluster):
    with FaultTolerantExecutor(QUICK_RETRIES, manager=False, max_workers=4) as executor:
        assert executor.max_in_flight == 4
        assert executor._max_workers == 4
        assert list(executor.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_stdlib_argument_errors():
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        FaultTolerantExecutor(max_workers=0)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        FaultTolerantExecutor(max_workers=-1)
    with pytest.raises(ValueError, match="pass only one of them"):
        FaultTolerantExecutor(max_workers=2, max_in_flight=3)
    with pytest.raises(TypeError, match="pass max_workers=4"):
        FaultTolerantExecutor(4)
    with pytest.raises(TypeError, match=r"initializer=.* is not callable"):
        FaultTolerantExecutor(initializer=3)
    with pytest.raises(TypeError, match="size="):
        FaultTolerantActorPool(Box, size=1, max_workers=2)
    with pytest.raises(TypeError, match="constructor"):
        FaultTolerantActorPool(Box, size=1, initializer=print)


def test_initializer_runs_once_per_worker_process(cluster, tmp_path):
    log = tmp_path / "init.log"
    with FaultTolerantExecutor(
        QUICK_RETRIES, manager=False, initializer=remember, initargs=(str(log), "loaded")
    ) as executor:
        assert [executor.submit(initialized, i).result(timeout=60) for i in range(5)] == [
            "loaded"
        ] * 5
        assert list(executor.map(initialized, range(300))) == ["loaded"] * 300  # batched too
        with pytest.raises(ValueError, match="initializer"):
            executor.submit(ray.remote(initialized), 1)
    pids = log.read_text().split()
    assert len(pids) == len(set(pids))  # once per worker process
