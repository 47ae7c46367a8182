"""Figure 12: one node 8x slower (alive, answering probes): a batch's end.

24 tasks of 0.4 s on 3 one-CPU nodes, one of which sleeps 8x longer. Measured side by side
in one run: plain Ray (its lease reuse pulls work to the fast nodes), plain Ray with a
``label_selector`` that keeps tasks off an (unused) excluded node, which is what an executor
that let Ray place within the allowed nodes could reach at best, and ray_ft, which pins
every attempt and learns each node's pace (a slow node gets one attempt at a time, and none
once the fast nodes would clear the queue before it finished).
"""

from __future__ import annotations

import statistics
import time

import ray
from common import local_cluster, table

from ray_ft import FaultTolerantExecutor

N_TASKS = 24
TASK_S = 0.4
FACTOR = 8.0


def pace(i: int, slow_node: str, seconds: float = TASK_S) -> int:
    here = ray.get_runtime_context().get_node_id()
    time.sleep(seconds * (FACTOR if here == slow_node else 1.0))
    return i


def run(repeats: int) -> dict:
    times: dict[str, list[float]] = {"plain": [], "label_selector": [], "ray_ft": []}
    with local_cluster(3) as cluster:
        slow = next(iter(cluster.worker_nodes)).node_id
        plain = ray.remote(pace)
        selected = plain.options(label_selector={"ray.io/node-id": "!in(ffffffff)"})
        ray.get([plain.remote(i, slow, 0.01) for i in range(6)])
        with FaultTolerantExecutor({}, manager=False) as ex:
            list(ex.map(abs, range(6)))  # warm workers; the pace is learned in the batch
            for _ in range(repeats):
                for name, submit in (
                    ("plain", lambda: ray.get([plain.remote(i, slow) for i in range(N_TASKS)])),
                    (
                        "label_selector",
                        lambda: ray.get([selected.remote(i, slow) for i in range(N_TASKS)]),
                    ),
                    ("ray_ft", lambda: list(ex.map(pace, range(N_TASKS), [slow] * N_TASKS))),
                ):
                    start = time.monotonic()
                    assert submit() == list(range(N_TASKS))
                    times[name].append(time.monotonic() - start)
    return times


def report(times: dict) -> str:
    plain = statistics.median(times["plain"])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        rows.append([name, med, min(values), max(values), med / plain])
    ours = statistics.median(times["ray_ft"]) / plain
    verdict = "met" if ours <= 1.2 else f"missed: {ours:.2f}x"
    rows.append(["goal (ray_ft / plain)", "", "", "", f"≤ 1.2 ({verdict})"])
    return table(["placement", "batch s (median)", "min", "max", "ratio to plain Ray"], rows)
