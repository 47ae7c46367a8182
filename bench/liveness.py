"""Figures 9-11: liveness on busy nodes, the default config on a frozen node, CPU-bound work.

9. Probe round trip and heartbeat gaps on idle nodes and on nodes at 100 % CPU: the
   measurement behind the liveness defaults (1 s heartbeats, phi 8, 2 s floor).
10. The default config (no settings at all): a node frozen under 12 one-second CPU-bound
    tasks; seconds until it is excluded and until all tasks are done.
11. 30 one-second CPU-bound evaluations, probes every 0.5 s: ray_ft vs plain Ray, and the
    verdicts ray_ft reached (there must be none).
"""

from __future__ import annotations

import statistics
import time

import ray
from common import local_cluster, table
from faults import _fault, _thaw

from ray_ft import FaultTolerantExecutor, get_manager


def busy(i: int, seconds: float = 1.0) -> int:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1
    return i


def _sample(manager, seconds: float) -> dict:
    latencies, silences, phis, failed = [], [], [], set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = ray.get(manager.status.remote())
        for node_id, node in status["nodes"].items():
            if node["status"] == "dead":
                continue
            if node["latency_ms"] is not None:
                latencies.append(node["latency_ms"])
            if node["heartbeat_silence_s"] is not None:
                silences.append(node["heartbeat_silence_s"])
            if node["phi"] is not None:
                phis.append(node["phi"])
            if node["status"] != "alive":
                failed.add(node_id)
        time.sleep(0.25)
    return {
        "latency_med": statistics.median(latencies) if latencies else float("nan"),
        "latency_max": max(latencies, default=float("nan")),
        "silence_max": max(silences, default=float("nan")),
        "phi_max": max(phis, default=float("nan")),
        "verdicts": len(failed),
    }


def probe_rtt(seconds: float = 15.0) -> str:
    rows = []
    with local_cluster(3):
        manager = get_manager()
        time.sleep(3.0)
        rows.append(["idle", *_sample(manager, seconds).values()])
        hog = ray.remote(busy)
        refs = [hog.remote(i, seconds + 2) for i in range(3)]  # every node's CPU at 100 %
        time.sleep(1.0)
        rows.append(["100 % CPU on every node", *_sample(manager, seconds).values()])
        ray.get(refs)
    return table(
        [
            "load",
            "probe RTT median (ms)",
            "RTT max (ms)",
            "longest heartbeat silence (s)",
            "max phi",
            "nodes judged failed",
        ],
        rows,
    )


def default_freeze(repeats: int) -> str:
    detect, done = [], []
    for _ in range(repeats):
        with local_cluster(3) as cluster:
            manager = get_manager()  # no settings at all
            time.sleep(3.0)
            with FaultTolerantExecutor() as ex:
                futures = [ex.submit(busy, i, 1.0) for i in range(12)]
                pids = _fault(cluster, "freeze")
                start = time.monotonic()
                victim = next(iter(cluster.worker_nodes)).node_id
                try:
                    while victim not in ray.get(manager.excluded_nodes.remote())["excluded"]:
                        time.sleep(0.05)
                    detect.append(time.monotonic() - start)
                    assert [f.result(timeout=180) for f in futures] == list(range(12))
                    done.append(time.monotonic() - start)
                finally:
                    _thaw(pids)
    return table(
        ["default config, frozen node", "median", "min", "max", "goal"],
        [
            [
                "freeze -> node excluded (s)",
                statistics.median(detect),
                min(detect),
                max(detect),
                "≤ 3 s",
            ],
            ["freeze -> all 12 done (s)", statistics.median(done), min(done), max(done), "≤ 15 s"],
        ],
    )


PROBES = {"health_check_interval": 0.5, "probe_timeout": 5.0, "probe_failure_threshold": 3}


def cpu_bound(repeats: int) -> str:
    rows = []
    for _ in range(repeats):
        with local_cluster(3):
            start = time.monotonic()
            plain = ray.remote(busy)
            assert ray.get([plain.remote(i) for i in range(30)]) == list(range(30))
            plain_s = time.monotonic() - start
            manager = get_manager(PROBES)
            with FaultTolerantExecutor(PROBES, manager=manager) as ex:
                start = time.monotonic()
                assert list(ex.map(busy, range(30))) == list(range(30))
                ft_s = time.monotonic() - start
                stats = ex.stats()
            excluded = len(ray.get(manager.excluded_nodes.remote())["excluded"])
            rows.append(
                [plain_s, ft_s, ft_s / plain_s, stats["retries"], stats["abandoned"], excluded]
            )
    return table(
        ["plain Ray (s)", "ray_ft (s)", "ratio", "retries", "abandoned", "nodes excluded"], rows
    )
