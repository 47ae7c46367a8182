"""`make bench`: every figure, measured against plain Ray in the same run -> RESULTS.md."""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1, before Ray loads

import batching  # noqa: E402
import checkpoint  # noqa: E402
import cold_start  # noqa: E402
import core  # noqa: E402
import elastic  # noqa: E402
import faults  # noqa: E402
import liveness  # noqa: E402
import many_nodes  # noqa: E402
import overhead  # noqa: E402
import pool  # noqa: E402
import scale  # noqa: E402
import slow  # noqa: E402
import stragglers  # noqa: E402
from common import machine  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))

MISSED = """\
- **Killed node** (goal 10x). After SIGKILL the node's attempts are rerun within about 2 s;
  the remaining time is the work itself: twelve 1-second tasks on the two surviving 1-CPU
  nodes take at least 6 s, so no scheduler can finish in under about 6 s while plain Ray
  takes about 16 s (its GCS needs ~14 s to declare the node dead). The achievable ratio for
  this workload is about 2.5x; the 10x goal fits the frozen node, where plain Ray never
  finishes.
- **Checkpoint load, 10 MB** (goal 0.91). The store reads three files (manifest, JSON
  document, .npy) and verifies the sha256 of each before decoding (hashed while read);
  raw read+unpickle of 10 MB takes about 6 ms, so the fixed costs dominate. Decoding before
  the check would close the gap and is refused on purpose. At 200 MB the ratio is 0.92-1.0.
"""


def main() -> None:
    started = time.monotonic()
    sections: list[tuple[str, str, str]] = []

    def section(title: str, note: str, build) -> None:
        t = time.monotonic()
        print(f"== {title} ...", flush=True)
        body = build()
        print(body, f"\n({time.monotonic() - t:.0f} s)\n", flush=True)
        sections.append((title, note, body))

    section(
        "1. Overhead: executor vs raw ray.remote",
        f"Same 3-node cluster (1 CPU each), interleaved, {REPEATS} repetitions.",
        lambda: overhead.report(overhead.run(REPEATS)),
    )
    section(
        "2. Frozen node (SIGSTOP of raylet and workers)",
        "12 one-second tasks on 3 nodes; seconds from the freeze until all are done. "
        "ray_ft: probe interval 0.5 s, timeout 1 s, threshold 2. Plain Ray: "
        "max_retries=3, bounded at 180 s and measured once (each run may take the "
        "whole bound).",
        lambda: faults.fault_report("frozen node", faults.fault_pair("freeze", REPEATS, 1)),
    )
    section(
        "3. Killed node (SIGKILL of raylet and workers)",
        "Same workload and settings as figure 2.",
        lambda: faults.fault_report("killed node", faults.fault_pair("kill", REPEATS, REPEATS)),
    )
    section(
        "4. Goodput under chaos",
        "One worker process SIGKILLed every 2 s vs no faults; lost and duplicate "
        "results counted from the futures.",
        lambda: faults.goodput(REPEATS),
    )
    section(
        "5. Retry delay precision",
        "A task that fails once with a listed application error; gap between the "
        "two attempts' starts. Plain Ray: retry_exceptions=True, max_retries=1.",
        lambda: faults.retry_delay(5),
    )
    section(
        "6. Checkpoint save and load",
        "DiskCheckpointStore (JSON + .npy, sha256 manifest written last, fsync) and "
        "ObjectStoreCheckpointStore (manager-owned object + a copy on the manager's disk) vs "
        "raw pickle + write + fsync, and raw read + unpickle, of the same state.",
        lambda: checkpoint.report(checkpoint.run(REPEATS)),
    )
    section("7. Core scale", "Pure Python, no Ray.", lambda: core.core_scale(REPEATS))
    section(
        "8. Driver memory",
        "100,000 trivial futures submitted with max_in_flight=8, "
        "so almost all wait in the executor.",
        core.memory,
    )

    section(
        "9. Liveness: probe round trip on idle and busy nodes",
        "3 nodes, default liveness (heartbeat every 1 s, phi threshold 8, 2 s floor); "
        "the manager's status sampled every 0.25 s for 15 s per phase. The defaults were "
        "chosen from this measurement: busy nodes answer within milliseconds, so a 2 s "
        "floor and phi 8 leave a wide margin and still find a freeze in about 3 s.",
        liveness.probe_rtt,
    )
    section(
        "10. Default config, frozen node",
        "No settings at all; 12 one-second CPU-bound tasks on 3 nodes, one node frozen "
        "(SIGSTOP of raylet and workers). Plain Ray on the same fault: figure 2.",
        lambda: liveness.default_freeze(REPEATS),
    )
    section(
        "11. CPU-bound evaluations: busy is not broken",
        "30 one-second busy loops (every core at 100 %), probes every 0.5 s.",
        lambda: liveness.cpu_bound(REPEATS),
    )

    section(
        "12. A slow node (8x, alive)",
        f"24 tasks of 0.4 s on 3 nodes, one 8x slower; {REPEATS} repetitions interleaved.",
        lambda: slow.report(slow.run(REPEATS)),
    )

    section(
        "13. Stateful workers: FaultTolerantActorPool vs ray.util.ActorPool",
        "3 actors (0.5 CPU each) on 3 nodes.",
        lambda: pool.run(REPEATS),
    )

    section(
        "14. A node slowed 5x for real: generation time",
        f"GeneticAlgorithm, population {stragglers.POPULATION}, {stragglers.GENERATIONS} "
        "generations of CPU-bound evaluations (about 0.15-0.25 s) on 3 one-CPU nodes; "
        "`chaos.slow_node` duty-cycles one node's workers to a fifth of the time (alive, "
        f"answering probes). {REPEATS} repetitions interleaved. Every run must reach the "
        "same best fitness.",
        lambda: stragglers.generations(REPEATS),
    )
    section(
        "15. Tasks that run out of memory",
        "12 tasks that each hold 2 GiB for 1.5 s on 3 nodes of 2 CPUs (4 GiB of logical "
        "memory each); Ray's memory monitor kills above about 3.5 tasks' worth "
        "(`RAY_memory_usage_threshold` set from the free memory). Plain Ray retries OOM "
        "kills without limit and with the same request; ray_ft's retries ask for twice the "
        "memory share, and the callable's other calls follow.",
        lambda: stragglers.out_of_memory(2),
    )
    section(
        "16. Scale: simulated nodes, fake clock",
        "Pure (no Ray): the scheduler's CPU per call at 3 to 10,000 nodes (N nodes of 4 "
        "CPUs, 2N calls in flight, attempts done after their node's runtime; then 20,000 "
        "calls alive at every size), with the garbage collector's share (`gc.callbacks`) "
        "and the ratio without it; retained memory over 100 generations of 1,000 nodes "
        "replaced, a liveness round over simulated probes, a storm of failure reports into "
        "one manager and what 50 drivers' polls send after 5 more nodes are excluded.",
        scale.run,
    )

    section(
        "17. Scale on a real cluster: 3 raylets against 12",
        "The largest `ray.cluster_utils.Cluster` this machine holds (12 one-CPU raylets on "
        "2 cores) against 3: the same CPU-bound calls through the executor; scheduler CPU "
        "per call measured by a thread-CPU timer around every scheduler entry point "
        "(ray_ft's own decisions, not Ray's threads). Goal: 12 nodes within 1.2x of 3.",
        many_nodes.run,
    )

    section(
        "18. Batching: tiny calls packed into one Ray task",
        "3 one-CPU nodes; the executor with batching on (default) and off against raw Ray "
        "(one `f.remote()` per call), interleaved, "
        f"{batching.REPEATS} repetitions (median; range for batching on). 10 ms and 1 s "
        "calls spin the CPU (no sleep). Dask: `dask.compute(graph, scheduler=ex)` on 3,000 "
        "`inc` and 1,500 `sum` tasks; SciPy: `differential_evolution(rosen, workers=ex.map)`.",
        batching.run,
    )

    section(
        "19. Elastic clusters: the autoscaler, preemption notices, a GCS outage",
        "Ray's real autoscaler (fake multi-node provider, real raylets, update interval 1 s, "
        "idle timeout 6 s): 6 calls of 4 s asking a resource no node has (`sim`, 0-3 "
        "workers) and 9 asking one kept at one node (`base`, 1-3); job time, peak nodes, "
        "seconds from the end of the work until the cluster is back at its minimum (ray_ft's "
        "manager alive and its executor open). Preemption: 4 one-CPU nodes, 3 CPU-bound "
        "calls of 8 s, a busy node drained 1 s in with a 3 s deadline and removed at it. "
        "GCS outage: RocksDB-backed GCS killed 4 s in and restarted on its port 15 s later, "
        "24 CPU-bound calls of 2 s on 3 nodes. One run of each (the autoscaler's waits "
        "dominate).",
        lambda: elastic.report(1),
    )

    section(
        "20. Cold start: the first job on a fresh cluster",
        "A fresh local cluster of 3 one-CPU nodes per run and no ray_ft manager on it yet (a "
        "KubeRay RayJob's every job). Timed from the moment the job hands over its first "
        "call, the executor created inside the window: the first result (a call of no "
        "work), then 12 CPU-bound calls of 1 s. Plain Ray and ray_ft alternate on fresh "
        f"clusters; median of {REPEATS}. Goal: first result within plain Ray's + 0.2 s, the "
        "job within 1.05x.",
        lambda: cold_start.report(cold_start.run(REPEATS)),
    )

    sections.append(("Where a goal is missed, and why", "", MISSED))
    total = time.monotonic() - started
    lines = [
        "# ray_ft benchmark results",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. "
        f"Repetitions: {REPEATS} (median, min, max). Total time {total / 60:.1f} min.",
        "Written by `make bench` (bench/run_all.py); every figure is a ratio or a pair "
        "measured in the same run.",
        "",
    ]
    for title, note, body in sections:
        lines += [f"## {title}", "", note, "", body, ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'RESULTS.md'} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
