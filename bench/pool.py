"""Figure 13: FaultTolerantActorPool vs ray.util.ActorPool on the same kind of actors.

No faults: throughput of 600 calls of 5 ms through 3 actors. With faults: 900 calls of
20 ms while one actor process is SIGKILLed every 2 s; ActorPool hands a dead actor's call
back as an error and keeps the dead actor (ray issues 50313, 32489), so it cannot complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import ray
from common import local_cluster, table
from ray.util import ActorPool

from ray_ft import FaultTolerantActorPool


class Evaluator:
    def work(self, i: int, seconds: float) -> int:
        time.sleep(seconds)
        return i

    def pid(self) -> int:
        return os.getpid()


def _ray_pool_run(n: int, seconds: float) -> float:
    actors = [ray.remote(Evaluator).options(num_cpus=0.5).remote() for _ in range(3)]
    pool = ActorPool(actors)
    start = time.monotonic()
    out = list(pool.map(lambda a, i: a.work.remote(i, seconds), range(n)))
    assert out == list(range(n))
    elapsed = time.monotonic() - start
    for actor in actors:
        ray.kill(actor)
    return elapsed


def _ft_pool_run(n: int, seconds: float, chaos: bool) -> tuple[float, int, int]:
    with FaultTolerantActorPool(
        Evaluator,
        size=3,
        config={"retry_delay": 0.05, "max_retries": 10},
        manager=False,
        num_cpus=0.5,
    ) as pool:
        list(pool.map(Evaluator.work, range(6), [0.0] * 6))
        stop = threading.Event()

        def killer() -> None:
            while not stop.wait(2.0):
                pids = [a.pid for a in list(pool._workers.actors.values()) if a.pid and not a.dead]
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pids[0], signal.SIGKILL)

        thread = threading.Thread(target=killer, daemon=True)
        start = time.monotonic()
        if chaos:
            thread.start()
        futures = [pool.submit(Evaluator.work, i, seconds) for i in range(n)]
        results = [f.result(timeout=600) for f in futures]
        elapsed = time.monotonic() - start
        stop.set()
        assert results == list(range(n))
        stats = pool.stats()
    return elapsed, stats["replaced"], stats["retries"]


def _ray_pool_under_chaos(n: int, seconds: float) -> str:
    actors = [ray.remote(Evaluator).options(num_cpus=0.5).remote() for _ in range(3)]
    pool = ActorPool(actors)
    pid = ray.get(actors[0].pid.remote())
    timer = threading.Timer(2.0, os.kill, (pid, signal.SIGKILL))
    timer.start()
    try:
        list(pool.map(lambda a, i: a.work.remote(i, seconds), range(n)))
        return "completed"
    except Exception as exc:
        return f"failed: {type(exc).__name__}"
    finally:
        for actor in actors:
            ray.kill(actor)


def run(repeats: int) -> str:
    rows = []
    with local_cluster(3):
        for _ in range(repeats):
            raw = _ray_pool_run(600, 0.005)
            ours, _, _ = _ft_pool_run(600, 0.005, chaos=False)
            rows.append(["600 calls of 5 ms, no faults", raw, ours, 600 / raw, 600 / ours, "-"])
        clean, _, _ = _ft_pool_run(900, 0.02, chaos=False)
        chaos, replaced, retries = _ft_pool_run(900, 0.02, chaos=True)
        rows.append(
            [
                "900 calls of 20 ms, an actor SIGKILLed every 2 s",
                _ray_pool_under_chaos(900, 0.02),
                chaos,
                "-",
                900 / chaos,
                f"replaced {replaced}, retries {retries}, {chaos / clean:.2f}x the clean run",
            ]
        )
    return table(
        [
            "workload",
            "ActorPool (s)",
            "ray_ft pool (s)",
            "ActorPool calls/s",
            "ray_ft calls/s",
            "notes",
        ],
        rows,
    )
