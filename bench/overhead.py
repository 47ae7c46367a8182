"""Figure 1: throughput of FaultTolerantExecutor vs raw ray.remote, same cluster, interleaved.

Prints the ratio executor / raw for 3,000 trivial tasks and 500 tasks of 10 ms (median of
REPEATS runs, each run timing both in alternating order). Goal: >= 0.95.
"""

from __future__ import annotations

import sys
import time

import ray
from common import local_cluster, machine, summary, table
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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


def bounded_run(fn, n: int, bound: int, pinned: bool) -> float:
    """The least a loop that keeps ``bound`` attempts in flight must do: launch, one
    ray.wait for the next result and one for the rest, ray.get; no bookkeeping at all."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    base = ray.remote(max_retries=0)(fn)
    remotes = (
        [
            base.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            for n in nodes
        ]
        if pinned
        else [base]
    )
    start = time.perf_counter()
    launched, done, inflight = 0, 0, []
    while done < n:
        while launched < n and len(inflight) < bound:
            inflight.append(remotes[launched % len(remotes)].remote(launched))
            launched += 1
        ready, inflight = ray.wait(inflight, num_returns=1)
        more, inflight = ray.wait(inflight, num_returns=len(inflight), timeout=0)
        done += len(ray.get(ready + more))
    return n / (time.perf_counter() - start)


CEILINGS = (
    ("pinned, 12 in flight", 12, True),
    ("pinned, 48", 48, True),
    ("not pinned, 48", 48, False),
)


def ceilings(repeats: int) -> dict:
    """What a bounded loop reaches at all, relative to raw Ray in the same run."""
    bounded_run(trivial, 300, 12, True)
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in CEILINGS}
    for _ in range(repeats):
        raw = raw_run(trivial, 3000)
        for name, bound, pinned in CEILINGS:
            ratios[name].append(bounded_run(trivial, 3000, bound, pinned) / raw)
    return {name: summary(values) for name, values in ratios.items()}


def run(repeats: int = REPEATS) -> dict:
    results = {}
    with local_cluster(3), FaultTolerantExecutor() as ex:
        results["3000 trivial tasks"] = measure(ex, trivial, 3000, repeats)
        results["500 tasks of 10 ms"] = measure(ex, ten_ms, 500, repeats)
        results["ceilings"] = ceilings(repeats)
    return results


GOALS = {"3000 trivial tasks": 0.95, "500 tasks of 10 ms": 1.0}


def report(results: dict) -> str:
    rows = []
    for name, r in results.items():
        if name == "ceilings":
            continue
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
    return (
        table(
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
        + "\n\n"
        + table(
            ["a bare loop, 3000 trivial tasks", "ratio to raw (median)", "min", "max"],
            [
                [name, s["median"], s["min"], s["max"]]
                for name, s in results.get("ceilings", {}).items()
            ],
        )
    )


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else REPEATS
    out = run(repeats)
    print(machine())
    print(report(out))
