"""Figures 2-5: frozen node, killed node, goodput under chaos, retry-delay precision.

Each pair is measured in the same run: ray_ft vs plain Ray (max_retries=3) on a fresh
local 3-node cluster on 127.0.0.1. Plain Ray on a frozen node is bounded at 180 s.
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time

import psutil
import ray
from common import local_cluster, summary, table
from ray._private import ray_constants

from ray_ft import FaultTolerantExecutor, get_manager

FT_CONFIG = {
    "health_check_interval": 0.5,
    "probe_timeout": 1.0,
    "probe_failure_threshold": 2,
    "retry_delay": 0.1,
    "max_retry_delay": 1.0,
    "max_retries": 5,
    "worker_failure_threshold": 1000,
}
PLAIN_BOUND_S = 180.0
N_TASKS = 12
TASK_S = 1.0


def work(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def _node_pids(node) -> list[int]:
    root = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    return [root.pid] + [p.pid for p in root.children(recursive=True)]


def _has_task(node, name: str) -> bool:
    for pid in _node_pids(node)[1:]:
        try:
            if name in " ".join(psutil.Process(pid).cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def _fault(cluster, kind: str):
    """Freeze (SIGSTOP) or kill (SIGKILL) the raylet and workers of a worker node."""
    node = next(iter(cluster.worker_nodes))
    deadline = time.monotonic() + 30
    while not _has_task(node, "work") and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _node_pids(node)
    sig = signal.SIGSTOP if kind == "freeze" else signal.SIGKILL
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).send_signal(sig)
    return pids


def _thaw(pids):
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).send_signal(signal.SIGCONT)


def one_fault_run(kind: str, system: str) -> float | None:
    """Seconds from the fault until all N_TASKS finished; None when over the bound."""
    with local_cluster(3) as cluster:
        if system == "ray_ft":
            manager = get_manager(FT_CONFIG)
            time.sleep(2.0)  # first probe round answered
            ex = FaultTolerantExecutor(FT_CONFIG, manager=manager)
            futures = [ex.submit(work, i, TASK_S) for i in range(N_TASKS)]
            pids = _fault(cluster, kind)
            start = time.monotonic()
            try:
                assert [f.result(timeout=PLAIN_BOUND_S) for f in futures] == list(range(N_TASKS))
                return time.monotonic() - start
            finally:
                _thaw(pids)
                ex.shutdown(wait=False, cancel_futures=True)
        remote = ray.remote(max_retries=3)(work)
        refs = [remote.remote(i, TASK_S) for i in range(N_TASKS)]
        pids = _fault(cluster, kind)
        start = time.monotonic()
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PLAIN_BOUND_S)
            if len(ready) < len(refs):
                return None
            try:
                ray.get(refs)
            except Exception:
                return None
            return time.monotonic() - start
        finally:
            _thaw(pids)


def fault_pair(kind: str, repeats: int, plain_repeats: int) -> dict:
    ft = [one_fault_run(kind, "ray_ft") for _ in range(repeats)]
    plain = [one_fault_run(kind, "plain") for _ in range(plain_repeats)]
    return {"ray_ft": ft, "plain": plain}


def fmt_seconds(values) -> str:
    done = [v for v in values if v is not None]
    if len(done) < len(values):
        return f"> {PLAIN_BOUND_S:.0f} s ({len(values) - len(done)} of {len(values)} runs)"
    return f"{statistics.median(done):.1f} s (min {min(done):.1f}, max {max(done):.1f})"


def fault_report(name: str, pair: dict) -> str:
    ft = [v for v in pair["ray_ft"] if v is not None]
    plain = pair["plain"]
    plain_s = [PLAIN_BOUND_S if v is None else v for v in plain]
    speedup = statistics.median(plain_s) / statistics.median(ft) if ft else float("nan")
    bound = " (lower bound)" if any(v is None for v in plain) else ""
    verdict = "met" if speedup >= 10 else f"missed: {speedup:.1f}x of 10x"
    return table(
        [
            "fault",
            "ray_ft: all done after",
            "plain Ray (max_retries=3)",
            "speed-up (median)",
            "goal",
            "verdict",
        ],
        [
            [
                name,
                fmt_seconds(pair["ray_ft"]),
                fmt_seconds(plain),
                f"{speedup:.1f}x{bound}",
                "≥ 10x",
                verdict,
            ]
        ],
    )


# -- goodput under chaos ---------------------------------------------------------------


def eval_task(i: int) -> int:
    time.sleep(0.02)
    return i * i


def goodput_run(chaos: bool, n: int = 1200) -> dict:
    with local_cluster(3) as cluster:
        manager = get_manager(FT_CONFIG)
        resolved = []
        lock = threading.Lock()
        with FaultTolerantExecutor(FT_CONFIG, manager=manager) as ex:
            ex.submit(eval_task, 0).result()
            stop = threading.Event()
            kills = []

            def monkey():
                while not stop.wait(2.0):
                    victims = [
                        p
                        for node in cluster.list_all_nodes()
                        for p in _node_pids(node)[1:]
                        if _title_has(p, "eval_task")
                    ]
                    if victims:
                        psutil.Process(victims[0]).kill()
                        kills.append(victims[0])

            thread = threading.Thread(target=monkey, daemon=True)
            start = time.monotonic()
            futures = [ex.submit(eval_task, i) for i in range(n)]
            for f in futures:
                f.add_done_callback(
                    lambda fut: (lock.acquire(), resolved.append(fut), lock.release())
                )
            if chaos:
                thread.start()
            values = []
            lost = 0
            for f in futures:
                try:
                    values.append(f.result())
                except Exception:
                    lost += 1
            elapsed = time.monotonic() - start
            stop.set()
            stats = ex.stats()
        wrong = sum(1 for i, v in enumerate(values) if v != i * i) if not lost else -1
        return {
            "rate": n / elapsed,
            "lost": lost,
            "duplicates": len(resolved) - n,
            "wrong": wrong,
            "kills": len(kills),
            "retries": stats["retries"],
        }


def _title_has(pid: int, name: str) -> bool:
    try:
        return name in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def goodput(repeats: int) -> str:
    rows, ratios = [], []
    lost = dup = kills = 0
    for _ in range(repeats):
        clean = goodput_run(False)
        noisy = goodput_run(True)
        ratios.append(noisy["rate"] / clean["rate"])
        lost += noisy["lost"] + clean["lost"]
        dup += noisy["duplicates"] + clean["duplicates"]
        kills += noisy["kills"]
        rows.append((clean["rate"], noisy["rate"]))
    s = summary(ratios)
    verdict = "met" if s["median"] >= 0.8 and lost == 0 and dup == 0 else "missed"
    return table(
        [
            "workload",
            "no faults (eval/s)",
            "SIGKILL every 2 s (eval/s)",
            "ratio median",
            "min",
            "max",
            "workers killed",
            "lost",
            "duplicates",
            "goal",
            "verdict",
        ],
        [
            [
                "1,200 evals of 20 ms, 3 nodes",
                statistics.median(r[0] for r in rows),
                statistics.median(r[1] for r in rows),
                s["median"],
                s["min"],
                s["max"],
                kills,
                lost,
                dup,
                "≥ 0.8, 0 lost, 0 dup",
                verdict,
            ]
        ],
    )


# -- retry delay precision -------------------------------------------------------------


@ray.remote(num_cpus=0)
class Clock:
    def __init__(self) -> None:
        self.marks: dict[str, list[float]] = {}

    def mark(self, key: str) -> int:
        self.marks.setdefault(key, []).append(time.time())
        return len(self.marks[key])

    def get(self, key: str) -> list[float]:
        return self.marks.get(key, [])


class Flaky(Exception):
    pass


def fail_once(clock, key: str) -> str:
    if ray.get(clock.mark.remote(key)) == 1:
        raise Flaky("first attempt fails")
    return "ok"


def retry_delay(samples: int) -> str:
    with local_cluster(3):
        clock = Clock.remote()
        config = {
            **FT_CONFIG,
            "retry_delay": 0.1,
            "max_retry_delay": 0.1,
            "jitter": "none",
            "retry_exceptions": (Flaky,),
        }
        ft, plain = [], []
        with FaultTolerantExecutor(config, manager=False) as ex:
            for i in range(samples):
                assert ex.submit(fail_once, clock, f"ft{i}").result() == "ok"
                a, b = ray.get(clock.get.remote(f"ft{i}"))
                ft.append(b - a)
        remote = ray.remote(max_retries=1, retry_exceptions=True)(fail_once)
        for i in range(samples):
            assert ray.get(remote.remote(clock, f"ray{i}")) == "ok"
            a, b = ray.get(clock.get.remote(f"ray{i}"))
            plain.append(b - a)
    f, p = summary(ft), summary(plain)
    return table(
        [
            "requested backoff",
            "ray_ft achieved (median)",
            "min",
            "max",
            "plain Ray retry gap (median)",
            "min",
            "max",
        ],
        [
            [
                "0.1 s",
                f"{f['median']:.3f} s",
                f"{f['min']:.3f}",
                f"{f['max']:.3f}",
                f"{p['median']:.3f} s",
                f"{p['min']:.3f}",
                f"{p['max']:.3f}",
            ]
        ],
    )


if __name__ == "__main__":
    print(retry_delay(5))
    print(fault_report("killed node (SIGKILL raylet + workers)", fault_pair("kill", 1, 1)))
