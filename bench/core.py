"""Figures 7 and 8: the pure core at scale, and driver memory with 100k pending futures."""

from __future__ import annotations

import gc
import threading
import time

import psutil
from common import local_cluster, table

from ray_ft import CircuitBreaker, FailureType, FaultToleranceManager, Task, WorkerInfo


def core_scale(repeats: int = 3) -> str:
    rows = []
    decisions = []
    for _ in range(repeats):
        m = FaultToleranceManager({"max_retries": 1_000_000})
        tasks = [Task(f"t{i}") for i in range(1000)]
        n = 100_000
        t = time.perf_counter()
        for i in range(n):
            m.handle_task_failure(tasks[i % 1000], FailureType.WORKER_CRASH, None)
        decisions.append(n / (time.perf_counter() - t))
    rows.append(
        [
            "handle_task_failure",
            f"{sorted(decisions)[1]:,.0f} decisions/s",
            f"{min(decisions):,.0f}",
            f"{max(decisions):,.0f}",
            "-",
            "-",
        ]
    )

    times = []
    m = FaultToleranceManager()
    workers = [WorkerInfo(f"w{i}", capacity=100 + i % 50, load=i % 30) for i in range(1000)]
    task_ids = [f"t{i}" for i in range(100_000)]
    for _ in range(repeats):
        t = time.perf_counter()
        plan = m.reassign_tasks("w0", task_ids, workers)
        times.append((time.perf_counter() - t) * 1000)
    assert len(plan) == 100_000
    med = sorted(times)[len(times) // 2]
    rows.append(
        [
            "reassign_tasks, 100k tasks over 1k workers",
            f"{med:.1f} ms",
            f"{min(times):.1f}",
            f"{max(times):.1f}",
            "≤ 50 ms",
            "met" if med <= 50 else f"missed by {med - 50:.1f} ms",
        ]
    )

    per_call = []
    breaker = CircuitBreaker(10.0)
    for _ in range(repeats):
        n = 200_000
        t = time.perf_counter_ns()
        for _ in range(n):
            breaker.allow_request()
        per_call.append((time.perf_counter_ns() - t) / n)
    per_call.sort()
    rows.append(
        [
            "CircuitBreaker.allow_request (CLOSED)",
            f"{per_call[1]:.0f} ns",
            f"{per_call[0]:.0f}",
            f"{per_call[-1]:.0f}",
            "-",
            "-",
        ]
    )
    return table(["operation", "median", "min", "max", "goal", "verdict"], rows)


def noop(i: int) -> int:
    return i


def memory(n: int = 100_000) -> str:
    from ray_ft import FaultTolerantExecutor

    proc = psutil.Process()
    with local_cluster(3), FaultTolerantExecutor(manager=False, max_in_flight=8) as ex:
        ex.submit(noop, 0).result()
        gc.collect()
        before = proc.memory_info().rss
        peak = before
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.wait(0.05):
                peak = max(peak, proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        futures = [ex.submit(noop, i) for i in range(n)]
        pending = ex.stats()["pending"]
        peak = max(peak, proc.memory_info().rss)
        stop.set()
        sampler.join()
        ex.shutdown(wait=True, cancel_futures=True)
        del futures
    mb = peak / 2**20
    return table(
        [
            "driver",
            "RSS before",
            "peak RSS with pending futures",
            "growth",
            "pending at peak",
            "goal",
            "verdict",
        ],
        [
            [
                f"{n:,} futures submitted",
                f"{before / 2**20:.0f} MB",
                f"{mb:.0f} MB",
                f"{(peak - before) / 2**20:.0f} MB",
                f"{pending:,}",
                "≤ 500 MB peak",
                "met" if mb <= 500 else f"missed by {mb - 500:.0f} MB",
            ]
        ],
    )


if __name__ == "__main__":
    print(core_scale())
    print(memory())
