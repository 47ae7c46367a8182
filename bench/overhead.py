"""Figure 1: throughput of FaultTolerantExecutor vs raw ray.remote, same cluster, interleaved.

Prints the ratio executor / raw for 3,000 trivial tasks and 500 tasks of 10 ms (median of
REPEATS runs, each run timing both in alternating order). Goal: >= 0.95.
"""

from __future__ import annotations

import sys
import time

import ray
from common import local_cluster, machine, summary, table

from ray_ft import FaultTolerantExecutor

REPEATS = 5


def trivial(i: int) -> int:
    return i


def ten_ms(i: int) -> int:
    time.sleep(0.01)
    return i


def raw_run(fn, n: int) -> float:
    remote = ray.remote(max_retries=3)(fn)
    start = time.perf_counter()
    assert ray.get([remote.remote(i) for i in range(n)]) == list(range(n))
    return n / (time.perf_counter() - start)


def ft_run(ex: FaultTolerantExecutor, fn, n: int) -> float:
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
    assert [f.result() for f in futures] == list(range(n))
    return n / (time.perf_counter() - start)


def measure(ex: FaultTolerantExecutor, fn, n: int, repeats: int) -> dict:
    raw_run(fn, min(n, 300))  # warm both paths: workers started, code registered
    ft_run(ex, fn, min(n, 300))
    raws, fts, ratios = [], [], []
    for rep in range(repeats):
        if rep % 2 == 0:
            r, f = raw_run(fn, n), ft_run(ex, fn, n)
        else:
            f, r = ft_run(ex, fn, n), raw_run(fn, n)
        raws.append(r)
        fts.append(f)
        ratios.append(f / r)
    return {"raw": summary(raws), "ft": summary(fts), "ratio": summary(ratios)}


def run(repeats: int = REPEATS) -> dict:
    results = {}
    with local_cluster(3), FaultTolerantExecutor() as ex:
        results["3000 trivial tasks"] = measure(ex, trivial, 3000, repeats)
        results["500 tasks of 10 ms"] = measure(ex, ten_ms, 500, repeats)
    return results


GOALS = {"3000 trivial tasks": 0.95, "500 tasks of 10 ms": 1.0}


def report(results: dict) -> str:
    rows = []
    for name, r in results.items():
        goal = GOALS.get(name, 0.95)
        rows.append(
            [
                name,
                r["raw"]["median"],
                r["ft"]["median"],
                r["ratio"]["median"],
                r["ratio"]["min"],
                r["ratio"]["max"],
                f"≥ {goal:g}",
                "met"
                if r["ratio"]["median"] >= goal
                else f"missed by {goal - r['ratio']['median']:.2f}",
            ]
        )
    return table(
        [
            "workload",
            "raw tasks/s",
            "ray_ft tasks/s",
            "ratio (median)",
            "min",
            "max",
            "goal",
            "verdict",
        ],
        rows,
    )


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else REPEATS
    out = run(repeats)
    print(machine())
    print(report(out))
