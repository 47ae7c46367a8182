"""Cold start (figure 20): the first job on a fresh cluster, ray_ft against plain Ray.

A fresh local cluster of 3 one-CPU nodes per run, no ray_ft manager on it yet (as on a
KubeRay RayJob, where every job is a first job). Timed from the moment the job hands over
its first call: the first result, then 12 CPU-bound calls of 1 s, and the whole job. For
ray_ft the executor is created inside the timed window, as a job does. Plain Ray and ray_ft
alternate, each on its own fresh cluster, median of ``repeats``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
from common import local_cluster, summary, table  # noqa: E402

from ray_ft import FaultTolerantExecutor  # noqa: E402

CALLS = 12
SECONDS = 1.0


def burn(i: int, seconds: float = SECONDS) -> int:
    """CPU-bound for ``seconds``."""
    start, x = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        x += 1
    return i


def plain_job() -> tuple[float, float]:
    remote = ray.remote(num_cpus=1, max_retries=0)(burn)
    start = time.monotonic()
    ray.get(remote.remote(-1, 0.0))
    first = time.monotonic() - start
    assert ray.get([remote.remote(i) for i in range(CALLS)]) == list(range(CALLS))
    return first, time.monotonic() - start


def ft_job() -> tuple[float, float]:
    start = time.monotonic()
    with FaultTolerantExecutor() as ex:
        ex.submit(burn, -1, 0.0).result()
        first = time.monotonic() - start
        assert list(ex.map(burn, range(CALLS))) == list(range(CALLS))
        total = time.monotonic() - start
        assert not ex.stats()["excluded_nodes"], ex.stats()["excluded_nodes"]
    return first, total


def run(repeats: int = 3) -> dict[str, Any]:
    times: dict[str, dict[str, list[float]]] = {
        "plain": {"first": [], "job": []},
        "ray_ft": {"first": [], "job": []},
    }
    for _ in range(repeats):
        for name, job in (("plain", plain_job), ("ray_ft", ft_job)):
            with local_cluster(3):
                first, total = job()
            times[name]["first"].append(first)
            times[name]["job"].append(total)
    return {name: {k: summary(v) for k, v in parts.items()} for name, parts in times.items()}


def report(results: dict[str, Any]) -> str:
    plain, ft = results["plain"], results["ray_ft"]
    rows = [
        [
            what,
            plain[key]["median"],
            ft[key]["median"],
            ft[key]["median"] / plain[key]["median"],
            f"{ft[key]['min']:.2f}-{ft[key]['max']:.2f}",
        ]
        for what, key in (("first result (s)", "first"), (f"job: 1 + {CALLS} calls (s)", "job"))
    ]
    return table(["", "plain Ray", "ray_ft", "ratio", "ray_ft range"], rows)


if __name__ == "__main__":
    out = run(int(os.environ.get("BENCH_REPEATS", "3")))
    print(report(out))
