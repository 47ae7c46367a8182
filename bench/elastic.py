"""Elastic clusters, against plain Ray on the same work in the same run (figure 19).

- Ray's real autoscaler (fake multi-node provider, real raylets): scale from zero nodes of
  a shape (6 calls of 4 s asking ``sim``), and beyond ``min_workers`` (9 calls asking
  ``base``, one node kept): job time, peak node count, and the time until the cluster is
  back at its minimum after the work (ray_ft's manager alive, its executor open).
- A preemption notice: 4 one-CPU nodes, 3 CPU-bound calls of 8 s; 1 s in, a busy node is
  drained with a 3 s deadline and removed at it. Job time and retries.
- A 15 s GCS outage mid-run (RocksDB-backed GCS killed and restarted on its port): 24
  CPU-bound calls of 2 s on 3 nodes. Job time, and how long a ``submit()`` took inside it.

Each scenario runs once per repetition (the autoscaler's waits dominate; BENCH_REPEATS).
The autoscaler scenarios start their head with ``ray start --head --block`` and stop its
process tree after (``tests/autoscaling.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
)

import ray  # noqa: E402
from common import summary, table  # noqa: E402

from ray_ft import FaultTolerantExecutor  # noqa: E402
from ray_ft.actors.manager_actor import get_manager, shutdown_manager  # noqa: E402
from tests.autoscaling import autoscaling_cluster, wait_for_count, worker_count  # noqa: E402
from tests.elastic_tools import (  # noqa: E402
    persistent_cluster,
    preempt_one,
    restore,
    run_through_outage,
)
from tests.raytools import cluster_session  # noqa: E402

TYPES = {
    "sim": {"resources": {"CPU": 1, "sim": 1}, "min_workers": 0, "max_workers": 3},
    "base": {"resources": {"CPU": 1, "base": 1}, "min_workers": 1, "max_workers": 3},
}
CONFIG = {"capacity_wait_timeout": 300, "max_retries": 3, "retry_delay": 0.1, "jitter": "none"}


def sleepy(i: int, seconds: float = 4.0) -> int:
    time.sleep(seconds)
    return i


def burn(i: int, seconds: float = 8.0, where: str | None = None) -> int:
    """CPU-bound; writes its node to ``where`` as it starts (the drainer picks a busy one)."""
    if where is not None:
        with open(os.path.join(where, f"{i}.{os.getpid()}"), "w") as f:
            f.write(ray.get_runtime_context().get_node_id())
    start, x = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        x += 1
    return i


def autoscaler(repeats: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    with autoscaling_cluster({"CPU": 1}, TYPES, idle_timeout_minutes=0.1) as address:
        ray.init(address=address, namespace="ray_ft_bench", log_to_driver=False)
        wait_for_count("base", 1, timeout=120)
        get_manager(CONFIG)
        for name, resource, calls, floor in (
            ("from zero", "sim", 6, 0),
            ("beyond min", "base", 9, 1),
        ):
            rows = out.setdefault(name, {})
            for _ in range(repeats):
                wait_for_count(resource, floor, timeout=180)
                remote = ray.remote(resources={resource: 1})(sleepy)
                start = time.monotonic()
                ray.get([remote.remote(i) for i in range(calls)])
                job = time.monotonic() - start
                rows.setdefault("plain job", []).append(job)
                rows.setdefault("plain peak", []).append(worker_count(resource))
                rows.setdefault("plain down", []).append(wait_for_count(resource, floor, 180))
                with FaultTolerantExecutor(CONFIG, resources={resource: 1}) as ex:
                    start = time.monotonic()
                    list(ex.map(sleepy, range(calls)))
                    job = time.monotonic() - start
                    rows.setdefault("ray_ft job", []).append(job)
                    rows.setdefault("ray_ft peak", []).append(worker_count(resource))
                    rows.setdefault("ray_ft down", []).append(wait_for_count(resource, floor, 180))
                # cold: no manager yet, the executor made inside the timed window (a job on
                # a fresh cluster: no manager state either, or the new manager would take
                # itself for a restart of the last one)
                shutdown_manager()
                os.environ["RAY_FT_STORAGE"] = tempfile.mkdtemp(prefix="ray_ft_bench_")
                start = time.monotonic()
                with FaultTolerantExecutor(CONFIG, resources={resource: 1}) as ex:
                    list(ex.map(sleepy, range(calls)))
                    rows.setdefault("ray_ft cold job", []).append(time.monotonic() - start)
                wait_for_count(resource, floor, 180)
                get_manager(CONFIG)
        shutdown_manager()
    return out


def preemption(repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with cluster_session(4) as cluster, tempfile.TemporaryDirectory() as tmp:
        remote = ray.remote(burn)
        ray.get([remote.remote(i, 0.3) for i in range(4)])
        for r in range(repeats):
            for mode in ("plain", "ray_ft", "ray_ft cold"):
                restore(cluster)
                where = os.path.join(tmp, f"{mode}-{r}")
                os.mkdir(where)
                info: dict[str, Any] = {}
                drainer = threading.Thread(
                    target=preempt_one, args=(cluster, 1.0, 3.0, info, where)
                )
                if mode == "plain":
                    drainer.start()
                    start = time.monotonic()
                    ray.get([remote.remote(i, 8.0, where) for i in range(3)])
                    job = time.monotonic() - start
                    retries = float("nan")
                elif mode == "ray_ft cold":  # no manager; the executor made in the window
                    drainer.start()
                    start = time.monotonic()
                    with FaultTolerantExecutor(CONFIG) as ex:
                        list(ex.map(burn, range(3), [8.0] * 3, [where] * 3))
                        job = time.monotonic() - start
                        retries = ex.stats()["retries"]
                    shutdown_manager()
                else:
                    with FaultTolerantExecutor(CONFIG) as ex:
                        list(ex.map(burn, range(4), [0.3] * 4))
                        drainer.start()
                        start = time.monotonic()
                        list(ex.map(burn, range(3), [8.0] * 3, [where] * 3))
                        job = time.monotonic() - start
                        retries = ex.stats()["retries"]
                    shutdown_manager()
                drainer.join()
                out.setdefault(f"{mode} job", []).append(job)
                out.setdefault(f"{mode} retries", []).append(retries)
    return out


def _plain_through_outage(cluster: Any, calls: int, **outage: float) -> float:
    """Seconds plain Ray takes for ``calls`` calls of 2 s through a GCS outage (warm)."""
    remote = ray.remote(burn)
    ray.get([remote.remote(i, 0.2) for i in range(6)])
    seconds, _ = run_through_outage(
        cluster, lambda _m: ray.get([remote.remote(i, 2.0) for i in range(calls)]), **outage
    )
    return seconds


def gcs(repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    calls = 24
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as storage, persistent_cluster(storage) as cluster:
            plain = _plain_through_outage(cluster, calls)
            submit_s: list[float] = []
            with FaultTolerantExecutor(CONFIG) as ex:
                list(ex.map(burn, range(6), [0.2] * 6))

                def run(marks: dict[str, Any], submit_s: list[float] = submit_s) -> None:
                    futures = [ex.submit(burn, i, 2.0) for i in range(calls)]
                    while "down" not in marks:
                        time.sleep(0.05)
                    time.sleep(2.0)
                    start = time.monotonic()
                    futures.append(ex.submit(burn, calls, 0.1))
                    submit_s.append(time.monotonic() - start)
                    [f.result() for f in futures]

                ft, _ = run_through_outage(cluster, run)
                out.setdefault("excluded", []).append(len(ex.stats()["excluded_nodes"]))
            out.setdefault("plain job", []).append(plain)
            out.setdefault("ray_ft job", []).append(ft)
            out.setdefault("submit", []).append(submit_s[0])
    return out


def gcs_cold(repeats: int) -> dict[str, list[float]]:
    """The GCS killed 2 s after the job starts (plain Ray) or the executor is made (ray_ft,
    no manager yet: it and its probes are starting), started again 15 s later."""
    out: dict[str, list[float]] = {}
    calls = 24
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as storage, persistent_cluster(storage) as cluster:
            plain = _plain_through_outage(cluster, calls, after=2.0)
            excluded: list[int] = []

            def run(_marks: dict[str, Any], excluded: list[int] = excluded) -> None:
                with FaultTolerantExecutor(CONFIG) as ex:
                    list(ex.map(burn, range(calls), [2.0] * calls))
                    excluded.append(len(ex.stats()["excluded_nodes"]))

            ft, _ = run_through_outage(cluster, run, after=2.0)
            out.setdefault("plain job", []).append(plain)
            out.setdefault("ray_ft job", []).append(ft)
            out.setdefault("excluded", []).append(excluded[0])
    return out


def _m(values: list[float]) -> str:
    s = summary(values)
    return f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f})"


def _median_ratio(runs: dict[str, list[float]], of: str = "ray_ft job") -> float:
    """The median over the repeats of ``of`` against plain Ray's job of the same repeat."""
    return summary([f / p for f, p in zip(runs[of], runs["plain job"])])["median"]


def _against_plain(
    names: tuple[str, str],
    runs: dict[str, list[float]],
    more: dict[str, str],
    goal: tuple[str, bool],
) -> str:
    """One scenario's row against plain Ray: (table title, scenario), the runs, more
    columns by header, (goal header, met)."""
    title, scenario = names
    return table(
        [title, "plain job", "ray_ft job", "ratio", *more, goal[0]],
        [
            [
                scenario,
                _m(runs["plain job"]),
                _m(runs["ray_ft job"]),
                f"{_median_ratio(runs):.2f}",
                *more.values(),
                "met" if goal[1] else "missed",
            ]
        ],
    )


def report(repeats: int = 1) -> str:
    # one autoscaler run is too noisy for a 5 % goal (plain Ray alone varies by 25 %)
    scaled = autoscaler(max(3, repeats))
    rows = []
    for name, r in scaled.items():
        job_ratio = _median_ratio(r)
        cold = _median_ratio(r, "ray_ft cold job")
        extra = summary([f - p for f, p in zip(r["ray_ft down"], r["plain down"])])["median"]
        rows.append(
            [
                name,
                _m(r["plain job"]),
                _m(r["ray_ft job"]),
                f"{job_ratio:.2f}",
                f"{_m(r['ray_ft cold job'])}, {cold:.2f}",
                f"{max(r['plain peak']):.0f} / {max(r['ray_ft peak']):.0f}",
                _m(r["plain down"]),
                _m(r["ray_ft down"]),
                f"{extra:+.1f} s",
                "met" if job_ratio <= 1.1 and extra <= 10 else "missed",
            ]
        )
    parts = [
        table(
            [
                "autoscaler",
                "plain job",
                "ray_ft job",
                "ratio",
                "cold: executor made in the window, ratio",
                "peak nodes plain / ray_ft",
                "plain back to min",
                "ray_ft back to min",
                "difference",
                "goal (<= 1.1x, <= +10 s)",
            ],
            rows,
        )
    ]
    pre = preemption(repeats)
    ratio, cold = _median_ratio(pre), _median_ratio(pre, "ray_ft cold job")
    retries = max(pre["ray_ft retries"]), max(pre["ray_ft cold retries"])
    parts.append(
        _against_plain(
            ("preemption (3 s notice)", "3 calls of 8 s, 4 nodes"),
            pre,
            {
                "ray_ft retries": f"{retries[0]:.0f}",
                "cold: executor made in the window, ratio, retries": (
                    f"{_m(pre['ray_ft cold job'])}, {cold:.2f}, {retries[1]:.0f}"
                ),
            },
            ("goal (< 1, 0 retries)", max(ratio, cold) < 1 and max(retries) == 0),
        )
    )
    out = gcs(repeats)
    parts.append(
        _against_plain(
            ("GCS outage (15 s)", "24 calls of 2 s, 3 nodes"),
            out,
            {
                "submit() in the outage": f"{max(out['submit']) * 1000:.0f} ms",
                "excluded": f"{max(out['excluded']):.0f}",
            },
            ("goal (<= 1.1x)", _median_ratio(out) <= 1.1),
        )
    )
    cold_out = gcs_cold(repeats)
    parts.append(
        _against_plain(
            (
                "GCS outage while the manager starts",
                "killed 2 s after the executor is made, 15 s; 24 calls of 2 s, 3 nodes",
            ),
            cold_out,
            {"excluded": f"{max(cold_out['excluded']):.0f}"},
            (
                "goal (<= 1.0x, none excluded)",
                _median_ratio(cold_out) <= 1.0 and max(cold_out["excluded"]) == 0,
            ),
        )
    )
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(report(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
