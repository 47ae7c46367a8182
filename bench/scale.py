"""Scale figures with simulated nodes and a fake clock (no Ray): the same cost per call on 3
nodes and on 10,000, state that stays the size of the live cluster.

Scheduler: N nodes of 4 CPUs (mixed shapes: 1 node in 8 has a GPU and 1 call in 32 asks
for one); calls are submitted in batches of N/4 while at most 2N are in flight, each
attempt finishes after its node's runtime (1 s; 5 s on a slow node), the clock moves to
the next completion, ``tick()`` runs after each batch. CPU per call is the scheduler's
process time over the calls (the bench loop's own small share included). Manager: one
liveness round over N simulated probes (fake heartbeats, fake clock) and a storm of
failure reports.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import heapq
import os
import sys
import time
import tracemalloc
from typing import Any

from common import table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_ft._commands import Exclusions, Launch
from ray_ft._work import CallSpec, Work
from ray_ft.config import FTConfig
from ray_ft.scheduler import Scheduler

SCENARIOS = ("uniform", "slow 1/100", "10% excluded", "mixed shapes")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cluster(n: int, scenario: str) -> dict[str, dict[str, float]]:
    nodes = {}
    for i in range(n):
        resources = {"CPU": 4.0, "memory": 16e9}
        if scenario == "mixed shapes" and i % 8 == 0:
            resources["GPU"] = 1.0
        nodes[f"node-{i:05d}"] = resources
    return nodes


def scheduler_cpu_per_call(n: int, scenario: str, calls: int) -> float:
    """Microseconds of scheduler CPU per call."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    nodes = cluster(n, scenario)
    sched.nodes_changed(nodes)
    names = sorted(nodes)
    if scenario == "10% excluded":
        excluded = frozenset(names[: max(1, n // 10)]) if n >= 10 else frozenset()
        sched.exclusions_changed(Exclusions(excluded=excluded))
    slow = {name for i, name in enumerate(names) if scenario == "slow 1/100" and i % 100 == 7}
    cpu, gpu = CallSpec.of({}, None), CallSpec.of({"num_gpus": 1}, None)
    completions: list[tuple[float, int]] = []
    batch = max(1, n // 4)

    def take(commands: list[Any]) -> None:
        for command in commands:
            if isinstance(command, Launch):
                attempt = command.attempt
                runtime = 5.0 if attempt.node_id in slow else 1.0
                heapq.heappush(completions, (clock.now + runtime, attempt.attempt_id))

    gc.collect()
    started = time.process_time()
    submitted = 0
    while submitted < calls or sched.inflight:
        while submitted < calls and len(sched.inflight) < 2 * n and sched.pending() < batch:
            spec = gpu if scenario == "mixed shapes" and submitted % 32 == 0 else cpu
            work = Work(f"f-{submitted}", "f", None, b"", (), {}, spec, cf.Future())
            take(sched.submit(work))
            submitted += 1
        for _ in range(batch):
            if not completions:
                break
            at, attempt_id = heapq.heappop(completions)
            clock.now = max(clock.now, at)
            take(sched.attempt_done(attempt_id, value=None))
        take(sched.tick())
        if not completions and not sched.inflight and submitted >= calls:
            break
    return (time.process_time() - started) / calls * 1e6


def scheduler_figures(
    sizes: tuple[int, ...] = (3, 100, 1000, 10000),
) -> dict[str, dict[int, float]]:
    results: dict[str, dict[int, float]] = {}
    for scenario in SCENARIOS:
        results[scenario] = {}
        for n in sizes:
            calls = 20_000 if n <= 1000 else 40_000
            results[scenario][n] = scheduler_cpu_per_call(n, scenario, calls)
    return results


def churn_memory(n: int = 1000, generations: int = 100, calls_per_node: int = 2) -> dict[str, Any]:
    """Retained memory after generations of a whole cluster replaced, against one."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    spec = CallSpec.of({}, None)

    def generation(g: int) -> None:
        nodes = {f"g{g}-n{i}": {"CPU": 4.0, "memory": 16e9} for i in range(n)}
        sched.nodes_changed(nodes)
        launched = []
        for i in range(n * calls_per_node):
            work = Work(f"g{g}-{i}", "f", None, b"", (), {}, spec, cf.Future())
            launched += [c.attempt.attempt_id for c in sched.submit(work) if isinstance(c, Launch)]
        clock.now += 1.0
        for attempt_id in launched:
            sched.attempt_done(attempt_id, value=None)
        sched.tick()

    tracemalloc.start()
    generation(0)
    gc.collect()
    steady, _ = tracemalloc.get_traced_memory()
    for g in range(1, generations):
        generation(g)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"steady_mb": steady / 2**20, "after_mb": after / 2**20, "sizes": sched.table.sizes()}


def report_scheduler(results: dict[str, dict[int, float]]) -> str:
    sizes = sorted(next(iter(results.values())))
    rows = []
    for scenario, by_n in results.items():
        base = by_n[sizes[0]]
        row: list[Any] = [scenario]
        row += [f"{by_n[n]:.0f} us ({by_n[n] / base:.2f}x)" for n in sizes]
        ok_1k = by_n.get(1000, 0) <= 1.5 * base
        ok_10k = by_n.get(10000, 0) <= 2.0 * base
        row.append("met" if ok_1k and ok_10k else "missed")
        rows.append(row)
    headers = ["cluster", *(f"{n:,} nodes" for n in sizes), "goal (1k <= 1.5x, 10k <= 2x)"]
    return table(headers, rows)


def report_memory(result: dict[str, Any]) -> str:
    growth = result["after_mb"] - result["steady_mb"]
    rows = [
        [
            f"{result['steady_mb']:.2f} MB",
            f"{result['after_mb']:.2f} MB",
            f"{growth:+.2f} MB",
            ", ".join(f"{k} {v}" for k, v in result["sizes"].items()),
            "met" if growth <= 1.0 else "missed",
        ]
    ]
    return table(
        ["after 1 generation", "after 100", "retained growth", "tables after", "goal <= 1 MB"],
        rows,
    )


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:]) or (3, 100, 1000)
    print(report_scheduler(scheduler_figures(sizes)))
    print()
    print(report_memory(churn_memory()))
