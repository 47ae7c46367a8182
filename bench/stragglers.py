"""Figures 14-15: a node made 5x slow for real, and tasks that run out of memory.

14: generations of a GeneticAlgorithm (population 12, CPU-bound evaluations of about
0.25 s) on 3 one-CPU nodes, one of them slowed 5x by ``chaos.slow_node`` (its workers are
stopped and continued so they run a fifth of the time; it stays alive and answers its
probes). Interleaved per repetition: fault-free (plain Ray, ray_ft), and with the slow
node: plain Ray, ray_ft without speculation, ray_ft with speculation (optimize()'s default).
15: 12 tasks that each hold 2 GiB on 3 nodes of 2 CPUs, with Ray's memory monitor set to
kill above about 3.5 tasks' worth of memory: plain Ray (infinite OOM retries, same request)
vs ray_ft (OOM retries ask for twice the memory share, learned per callable).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time
from collections.abc import Iterator

import numpy as np
import psutil
import ray
from common import local_cluster, table
from ray.cluster_utils import Cluster

from ray_ft import FaultTolerantExecutor, GeneticAlgorithm, optimize
from ray_ft.tools.chaos import slow_node

GENERATIONS = 6
POPULATION = 12
LOOP = 4_000_000  # about 0.25 s of pure-Python work here
FACTOR = 5.0
GiB = 2**30
ALLOC = 2 * GiB
_THRESHOLD = "RAY_memory_usage_threshold"


def evaluate(genome) -> float:
    """Sphere, after a fixed amount of CPU work (slowed where the node is slowed)."""
    total = 0
    for i in range(LOOP):
        total += i & 7
    return float(np.sum(np.asarray(genome) ** 2))


def _ga() -> GeneticAlgorithm:
    return GeneticAlgorithm(dim=4, bounds=(-2.0, 2.0), population_size=POPULATION, seed=7)


def _plain_run() -> float:
    """The same ask/tell loop with plain Ray tasks (ray.get per generation)."""
    remote = ray.remote(evaluate)
    ga = _ga()
    for _ in range(GENERATIONS):
        candidates = ga.ask()
        fitness = ray.get([remote.remote(c.genome) for c in candidates])
        for ind, value in zip(candidates, fitness):
            ind.fitness = float(value)
        ga.tell(candidates)
    return float(ga.best.fitness)


@contextlib.contextmanager
def _slowed(node_id: str) -> Iterator[None]:
    event = slow_node(node_id, FACTOR, 300.0)
    try:
        yield
    finally:
        helper = psutil.Process(event.pids[0])
        helper.send_signal(signal.SIGTERM)  # continue every worker it stopped
        with contextlib.suppress(psutil.Error):
            helper.wait(timeout=10)


def generations(repeats: int) -> str:
    runs = (
        ("fault-free, plain Ray", False, None),
        ("fault-free, ray_ft", False, "on"),
        ("slow node, plain Ray", True, None),
        ("slow node, ray_ft without speculation", True, "off"),
        ("slow node, ray_ft with speculation", True, "on"),
    )
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    backups: list[float] = []
    bests: set[float] = set()
    with local_cluster(3) as cluster:
        slow = next(iter(cluster.worker_nodes)).node_id
        ray.get([ray.remote(evaluate).remote([0.0]) for _ in range(6)])  # warm workers
        executors = {
            "off": FaultTolerantExecutor({"speculation": False}, manager=False),
            "on": FaultTolerantExecutor({}, manager=False),  # optimize() turns it on
        }
        try:
            for _ in range(repeats):
                for name, slowed, which in runs:
                    with _slowed(slow) if slowed else contextlib.nullcontext():
                        start = time.monotonic()
                        if which is None:
                            bests.add(_plain_run())
                        else:
                            ex = executors[which]
                            before = ex.stats()
                            result = optimize(evaluate, _ga(), generations=GENERATIONS, executor=ex)
                            bests.add(float(result.best.fitness))
                            after = ex.stats()
                            if slowed and which == "on":
                                done = after["succeeded"] - before["succeeded"]
                                extra = after["speculated"] - before["speculated"]
                                backups.append(100.0 * extra / max(done, 1))
                        times[name].append((time.monotonic() - start) / GENERATIONS)
        finally:
            for ex in executors.values():
                ex.shutdown()
    clean = statistics.median(times["fault-free, ray_ft"])
    rows: list[list[object]] = [
        [name, statistics.median(v), min(v), max(v), statistics.median(v) / clean]
        for name, v in times.items()
    ]
    ours = statistics.median(times["slow node, ray_ft with speculation"]) / clean
    verdict = "met" if ours <= 1.3 else f"missed: {ours:.2f}x"
    rows.append(["goal (slow, speculation / fault-free)", "", "", "", f"≤ 1.3 ({verdict})"])
    rows.append(
        ["backups, % of evaluations", statistics.median(backups), min(backups), max(backups), ""]
    )
    same = "yes" if len(bests) == 1 else f"NO: {sorted(bests)}"
    rows.append(["same best fitness in every run", same, "", "", ""])
    headers = ["run", "s per generation (median)", "min", "max", "ratio to fault-free ray_ft"]
    return table(headers, rows)


def hog(i: int) -> int:
    """Hold ALLOC bytes (touched) for 1.5 s."""
    block = np.ones(ALLOC // 8)
    time.sleep(1.5)
    return i + int(block[0]) - 1


@contextlib.contextmanager
def _tight_cluster() -> Iterator[Cluster]:
    memory = psutil.virtual_memory()
    threshold = (memory.total - memory.available + 1.5 * GiB + 3.5 * ALLOC) / memory.total
    old = os.environ.get(_THRESHOLD)
    os.environ[_THRESHOLD] = f"{threshold:.4f}"  # read by the raylets started here
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "memory": 4 * GiB, "include_dashboard": False},
        )
        for _ in range(2):
            cluster.add_node(num_cpus=2, memory=4 * GiB)
    finally:
        if old is None:
            os.environ.pop(_THRESHOLD, None)
        else:
            os.environ[_THRESHOLD] = old
    ray.init(address=cluster.address, namespace="ray_ft_bench", log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def out_of_memory(repeats: int) -> str:
    rows = []
    n = 12
    with _tight_cluster():
        remote = ray.remote(hog)
        config = {"retry_delay": 0.1, "max_retry_delay": 1.0}
        for rep in range(repeats):
            start = time.monotonic()
            done = sum(1 for r in [remote.remote(i) for i in range(n)] if _ok(r))
            rows.append(
                [f"plain Ray #{rep + 1}", f"{done}/{n}", time.monotonic() - start, "-", "-"]
            )
            with FaultTolerantExecutor(config, manager=False) as ex:
                start = time.monotonic()
                futures = [ex.submit(hog, i) for i in range(n)]
                done = sum(1 for f in futures if f.exception(timeout=600) is None)
                elapsed = time.monotonic() - start
                stats = ex.stats()
            raised = ", ".join(f"{k} {v / GiB:g} GiB" for k, v in stats["memory_raised"].items())
            rows.append(
                [
                    f"ray_ft #{rep + 1}",
                    f"{done}/{n}",
                    elapsed,
                    stats["failures_by_type"].get("out_of_memory", 0),
                    raised or "-",
                ]
            )
    return table(
        ["run", "tasks completed", "seconds", "OOM kills seen", "memory asked after"], rows
    )


def _ok(ref) -> bool:
    try:
        ray.get(ref, timeout=600)
    except Exception:
        return False
    return True
