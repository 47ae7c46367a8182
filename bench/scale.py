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

from ray_ft.config import FTConfig
from ray_ft.core.commands import Exclusions, Launch
from ray_ft.core.events import AttemptDone, ExclusionsChanged, NodesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec, Work
from ray_ft.failures import FailureEvent, FailureType
from ray_ft.manager.liveness import LivenessBook, PhiAccrualDetector
from ray_ft.manager.state import FaultToleranceManager

SCENARIOS = ("uniform", "slow 1/100", "10% excluded", "10% degraded", "mixed shapes")


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


class _GCTimer:
    """Process time spent in CPython's cyclic garbage collector while active."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total += time.process_time() - self._start

    def __enter__(self) -> _GCTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def scheduler_cpu_per_call(
    n: int, scenario: str, calls: int, live: int | None = None
) -> tuple[float, float]:
    """Microseconds of scheduler CPU per call, and of it in the garbage collector.

    ``live``: keep this many calls submitted and unfinished at every size (their futures
    alive, as a caller holding a generation does) instead of at most 2N in flight."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    nodes = cluster(n, scenario)
    sched.handle(NodesChanged(nodes))
    names = sorted(nodes)
    if scenario == "10% excluded":
        excluded = frozenset(names[: max(1, n // 10)]) if n >= 10 else frozenset()
        sched.handle(ExclusionsChanged(Exclusions(excluded=excluded)))
    if scenario == "10% degraded":  # placed last: taking work only where no ok node has room
        degraded = frozenset(names[: max(1, n // 10)]) if n >= 10 else frozenset()
        sched.handle(ExclusionsChanged(Exclusions(degraded=degraded)))
    slow = {name for i, name in enumerate(names) if scenario == "slow 1/100" and i % 100 == 7}
    completions: list[tuple[float, int]] = []
    batch = max(1, n // 4)

    def take(commands: list[Any]) -> None:
        for command in commands:
            if isinstance(command, Launch):
                attempt = command.attempt
                runtime = 5.0 if attempt.node_id in slow else 1.0
                heapq.heappush(completions, (clock.now + runtime, attempt.attempt_id))

    def room() -> bool:
        if live is not None:
            return len(sched.inflight) + sched.pending() < live
        return len(sched.inflight) < 2 * n and sched.pending() < batch

    gc.collect()
    timer = _GCTimer()
    started = time.process_time()
    with timer:
        _drive(sched, clock, calls, batch, room, take, completions, scenario)
    spent = time.process_time() - started
    return spent / calls * 1e6, timer.total / calls * 1e6


def _drive(
    sched: Scheduler,
    clock: FakeClock,
    calls: int,
    batch: int,
    room: Any,
    take: Any,
    completions: list[tuple[float, int]],
    scenario: str,
) -> None:
    cpu, gpu = CallSpec.of({}, None), CallSpec.of({"num_gpus": 1}, None)
    submitted = 0
    while submitted < calls or sched.inflight:
        while submitted < calls and room():
            spec = gpu if scenario == "mixed shapes" and submitted % 32 == 0 else cpu
            work = Work(f"f-{submitted}", "f", None, b"", (), {}, spec, cf.Future())
            take(sched.handle(Submitted((work,))))
            submitted += 1
        for _ in range(batch):
            if not completions:
                break
            at, attempt_id = heapq.heappop(completions)
            clock.now = max(clock.now, at)
            take(sched.handle(AttemptDone(attempt_id, value=None)))
        take(sched.handle(Tick()))
        sched.demand()  # the executor reads its demand once per round (for the autoscaler)
        if not completions and not sched.inflight and submitted >= calls:
            break


def scheduler_figures(
    sizes: tuple[int, ...] = (3, 100, 1000, 10000), live: int | None = None
) -> dict[str, dict[int, tuple[float, float]]]:
    results: dict[str, dict[int, tuple[float, float]]] = {}
    for scenario in SCENARIOS:
        results[scenario] = {}
        for n in sizes:
            calls = 20_000 if n <= 1000 else 40_000
            results[scenario][n] = scheduler_cpu_per_call(n, scenario, calls, live)
    return results


def _generation(
    sched: Scheduler, clock: FakeClock, g: int, n: int, calls: int, spec: CallSpec, oom: bool
) -> None:
    """Replace every node by ``n`` new ones and run ``calls`` calls to the end (the first
    of them out of memory once when ``oom``: its retry reads the memory index)."""
    sched.handle(NodesChanged({f"g{g}-n{i}": {"CPU": 4.0, "memory": 16e9} for i in range(n)}))
    launched = []
    for i in range(calls):
        work = Work(f"g{g}-{i}", "f", None, b"", (), {}, spec, cf.Future())
        launched += [
            c.attempt.attempt_id for c in sched.handle(Submitted((work,))) if isinstance(c, Launch)
        ]
    clock.now += 1.0
    if oom:
        kind = FailureType.OUT_OF_MEMORY
        retry = sched.handle(AttemptDone(launched.pop(0), error=MemoryError(), failure_type=kind))
        clock.now += 120.0
        retry += sched.handle(Tick())
        launched += [c.attempt.attempt_id for c in retry if isinstance(c, Launch)]
    for attempt_id in launched:
        sched.handle(AttemptDone(attempt_id, value=None))
    sched.handle(Tick())


def churn_memory(n: int = 1000, generations: int = 100, calls_per_node: int = 2) -> dict[str, Any]:
    """Retained memory after generations of a whole cluster replaced, against one."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    spec = CallSpec.of({}, None)
    tracemalloc.start()
    _generation(sched, clock, 0, n, n * calls_per_node, spec, False)
    gc.collect()
    steady, _ = tracemalloc.get_traced_memory()
    for g in range(1, generations):
        _generation(sched, clock, g, n, n * calls_per_node, spec, False)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "steady_mb": steady / 2**20,
        "after_mb": after / 2**20,
        "sizes": sched.state.table.sizes(),
    }


def churn_generations(
    n: int, marks: tuple[int, ...] = (5, 40), calls: int = 200
) -> dict[int, float]:
    """Retained memory (MB over a one-generation warm-up) after each of ``marks``
    generations of the whole node set replaced by ``n`` new nodes, ``calls`` calls run to
    the end in each (issue 38: flat is the goal). The first generation's first call runs
    out of memory once (its retry reads the memory index); no later one does, so a stale
    entry there is never met at the top of the heap."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    spec = CallSpec.of({"memory": 1e9}, None)
    tracemalloc.start()
    _generation(sched, clock, 0, n, calls, spec, True)
    gc.collect()
    base, _ = tracemalloc.get_traced_memory()
    out: dict[int, float] = {}
    for g in range(1, max(marks) + 1):
        _generation(sched, clock, g, n, calls, spec, False)
        if g in marks:
            gc.collect()
            out[g] = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    tracemalloc.stop()
    return out


def report_churn(results: dict[int, dict[int, float]]) -> str:
    rows = []
    for n, by_gen in results.items():
        first, last = by_gen[min(by_gen)], by_gen[max(by_gen)]
        rows.append(
            [
                f"{n:,}",
                f"{first:+.2f} MB",
                f"{last:+.2f} MB",
                f"{last - first:+.2f} MB",
                "met" if last - first <= max(0.1 * abs(first), 0.05) else "missed",
            ]
        )
    return table(
        ["nodes replaced per generation", "after 5", "after 40", "40 - 5", "goal: flat (10 %)"],
        rows,
    )


def liveness_round(n: int, rounds: int = 5) -> dict[str, float]:
    """CPU of one liveness round (every node answers once, judged 5 times a second) over
    n simulated nodes, and when a node frozen mid-run is found."""
    book = LivenessBook(lambda: PhiAccrualDetector(threshold=8.0, timeout_floor=2.0))
    nodes = [f"node-{i}" for i in range(n)]
    frozen_after, found = 3, None
    costs = []
    for second in range(1, rounds + 6):
        started = time.process_time()
        for i, node in enumerate(nodes):
            if node == "node-1" and second > frozen_after:
                continue
            book.heartbeat(node, second + (i % 200) / 2000)
        for tick in range(5):
            for _ in book.judge(second + tick * 0.2):
                found = found or (second + tick * 0.2 - (frozen_after + 0.0005))
        costs.append(time.process_time() - started)
    return {"round_ms": sorted(costs)[len(costs) // 2] * 1000, "detect_s": found or float("nan")}


def report_storm(nodes: int = 1000, per_second: int = 10_000, batch: int = 100) -> dict[str, Any]:
    """A storm of failure reports into one manager (its methods run one at a time, as in
    the actor): how long an executor's exclusions poll waits, batch + snapshot."""
    clock = FakeClock()
    manager = FaultToleranceManager({"worker_failure_threshold": 3}, clock=clock)
    for i in range(nodes):
        manager.register_worker(f"node-{i}")
    waits = []
    sent = 0
    while sent < per_second:
        started = time.perf_counter()
        for k in range(batch):
            node = f"node-{(sent + k) * 7919 % nodes}"
            manager.report_failure(
                FailureEvent(time.time(), FailureType.WORKER_CRASH, worker_id=node, blame="node")
            )
        manager.exclusions_snapshot()
        waits.append(time.perf_counter() - started)
        sent += batch
        clock.now += batch / per_second
    unchanged = time.perf_counter()
    token = manager.exclusions_snapshot()["token"]
    for _ in range(50 * 2):  # 50 drivers polling twice a second, nothing changed
        assert manager.exclusions_snapshot()["token"] == token
    poll_us = (time.perf_counter() - unchanged) / 100 * 1e6
    waits.sort()
    return {
        "p50_ms": waits[len(waits) // 2] * 1000,
        "p99_ms": waits[int(len(waits) * 0.99) - 1] * 1000,
        "excluded": len(manager.excluded_workers()),
        "poll_us": poll_us,
    }


def delta_polls(nodes: int = 1000, drivers: int = 50, excluded: int = 100) -> dict[str, Any]:
    """50 drivers hold the snapshot of a 1,000-node cluster with 100 nodes excluded; 5 more
    are excluded: what each driver's next poll sends (node ids), against the whole."""
    clock = FakeClock()
    manager = FaultToleranceManager({"breaker_timeout": 600.0}, clock=clock)
    for i in range(nodes):
        manager.register_worker(f"node-{i}")
    for i in range(excluded):
        manager.breaker(f"node-{i}").open()
    held = manager.exclusions_since(None)
    for i in range(excluded, excluded + 5):
        manager.breaker(f"node-{i}").open()
    started = time.perf_counter()
    answers = [manager.exclusions_since(held["token"]) for _ in range(drivers)]
    poll_us = (time.perf_counter() - started) / drivers * 1e6
    sent = sum(len(a) + len(r) for a, r in answers[0]["delta"].values())
    whole = manager.exclusions_since(None)
    whole_ids = sum(len(whole[k]) for k in ("excluded", "failed", "dead", "degraded"))
    return {"sent": sent, "whole": whole_ids, "poll_us": poll_us}


def report_manager(
    liveness: dict[int, dict[str, float]], storm: dict[str, Any], delta: dict[str, Any]
) -> str:
    rows = [
        [
            f"{n:,} nodes",
            f"{r['round_ms']:.1f} ms",
            f"{r['detect_s']:.2f} s",
            "met" if n != 10_000 or r["round_ms"] <= 50 else "missed",
        ]
        for n, r in liveness.items()
    ]
    first = table(
        ["liveness, simulated", "CPU per round (1 answer per node)", "frozen node found", "goal"],
        rows,
    )
    second = table(
        [
            "10,000 reports/s over 1,000 nodes",
            "poll wait p50",
            "p99",
            "goal p99",
            "unchanged poll (50 drivers)",
            "changed poll: 5 more of 1,000 excluded (100 before)",
        ],
        [
            [
                f"batches of 100, {storm['excluded']} nodes excluded",
                f"{storm['p50_ms']:.2f} ms",
                f"{storm['p99_ms']:.2f} ms",
                "met" if storm["p99_ms"] <= 50 else "missed",
                f"{storm['poll_us']:.1f} us, nothing sent",
                f"{delta['sent']} node ids sent (whole snapshot: {delta['whole']}), "
                f"{delta['poll_us']:.1f} us per driver",
            ]
        ],
    )
    return f"{first}\n\n{second}"


def million_calls(n: int = 100, calls: int = 1_000_000, every: int = 200_000) -> list[float]:
    """Traced memory (MB) every ``every`` calls of a long run: it must stay flat."""
    clock = FakeClock()
    sched = Scheduler(FTConfig(), clock=clock)
    sched.handle(NodesChanged(cluster(n, "uniform")))
    spec = CallSpec.of({}, None)
    completions: list[tuple[float, int]] = []
    samples = []
    tracemalloc.start()
    for i in range(calls):
        work = Work(f"f-{i}", "f", None, b"", (), {}, spec, cf.Future())
        for command in sched.handle(Submitted((work,))):
            if isinstance(command, Launch):
                heapq.heappush(completions, (clock.now + 1.0, command.attempt.attempt_id))
        while len(sched.inflight) >= 2 * n or (completions and sched.pending() > n):
            at, attempt_id = heapq.heappop(completions)
            clock.now = max(clock.now, at)
            for command in sched.handle(AttemptDone(attempt_id, value=None)):
                if isinstance(command, Launch):
                    heapq.heappush(completions, (clock.now + 1.0, command.attempt.attempt_id))
        if (i + 1) % every == 0:
            gc.collect()
            samples.append(tracemalloc.get_traced_memory()[0] / 2**20)
    tracemalloc.stop()
    return samples


def report_scheduler(results: dict[str, dict[int, tuple[float, float]]]) -> str:
    sizes = sorted(next(iter(results.values())))
    rows = []
    for scenario, by_n in results.items():
        base, base_gc = by_n[sizes[0]]
        row: list[Any] = [scenario]
        row += [
            f"{us:.0f} us ({us / base:.2f}x; GC {gc_us:.0f} us; "
            f"{(us - gc_us) / max(base - base_gc, 1e-9):.2f}x without)"
            for us, gc_us in (by_n[n] for n in sizes)
        ]
        ok_1k = by_n.get(1000, (0.0, 0.0))[0] <= 1.5 * base
        ok_10k = by_n.get(10000, (0.0, 0.0))[0] <= 2.0 * base
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


def run() -> str:
    """Every scale figure (for bench/RESULTS.md)."""
    parts = [
        report_scheduler(scheduler_figures()),
        "The same with 20,000 calls submitted and unfinished at every size (a caller "
        "holding a generation of 20,000 futures on 3 nodes as on 10,000):",
        report_scheduler(scheduler_figures(live=20_000)),
        report_memory(churn_memory()),
        "Node churn (issue 38): the whole node set replaced by new nodes each generation, "
        "200 calls asking for memory in each; retained memory over a one-generation warm-up:",
        report_churn({n: churn_generations(n) for n in (1000, 10_000)}),
        "1,000,000 calls through the scheduler (100 nodes), traced memory every 200,000: "
        + ", ".join(f"{mb:.2f} MB" for mb in million_calls()),
        report_manager(
            {n: liveness_round(n) for n in (1000, 10_000)}, report_storm(), delta_polls()
        ),
    ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:])
    if sizes:
        print(report_scheduler(scheduler_figures(sizes)))
        print(report_scheduler(scheduler_figures(sizes, live=20_000)))
    else:
        print(run())
