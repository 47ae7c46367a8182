"""Kill anything — workers, a node, the driver — and the run ends with the clean result.

A clean run on threads (results are told in ask order: the executor does not change them);
on a real 3-node cluster, a run whose driver process is SIGKILLed after a
checkpoint and then restarted with resume=True from another folder, its checkpoints in a
relative folder with no storage set (the stable default, ~/ray_ft); runs whose workers are
SIGKILLed and one of whose nodes is removed, for the GA and for CMA-ES. Each must agree
bitwise with the clean run. The driver runs first, on a cluster whose node table is settled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ray_ft import DiskCheckpointStore, FaultTolerantExecutor, optimize
from tests.raytools import (
    restore_nodes,
    signal_all,
    wait_node_table_settled,
    worker_pids,
)
from tests.recovery_common import CONFIG, make_optimizer, slow_rastrigin

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

GENERATIONS = 8


def summary(result):
    return result.history, result.best.genome.tobytes().hex(), result.evaluations


def chaos(cluster, stop: threading.Event, log: list):
    """Kill a worker every 0.3 s and remove one node once; bounded, stops by itself."""
    removed = False
    for _ in range(25):
        if stop.wait(0.3):
            return
        pids = [p for n in cluster.list_all_nodes() for p in worker_pids(n, "slow_rastrigin")]
        if pids:
            signal_all(pids[:1], signal.SIGKILL)
            log.append(("kill", pids[0]))
        if not removed and len(log) >= 2:
            node = next(iter(cluster.worker_nodes))
            cluster.remove_node(node, allow_graceful=False)
            log.append(("remove", node.node_id))
            removed = True


def clean_run(kind: str):
    with ThreadPoolExecutor(16) as pool:
        return optimize(
            slow_rastrigin, make_optimizer(kind), generations=GENERATIONS, executor=pool
        )


def test_a_killed_driver_resumes_from_the_default_storage_to_the_clean_result(cluster, tmp_path):
    """The job keeps its checkpoints in a relative folder with no storage set, and runs
    again from another folder (as `ray job submit --working-dir` unpacks it on a new
    session): they are under ~/ray_ft, not under the folder it ran in. (The optimizers'
    own resume is bitwise identical for each of them: tests/optim/test_optim.py.)"""
    restore_nodes(cluster)
    wait_node_table_settled(cluster)  # a removed node is never handed to the driver
    clean = clean_run("ga")
    out, home = tmp_path / "out.json", tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "RAY_FT_STORAGE"} | {"HOME": str(home)}
    driver = [
        sys.executable,
        "-m",
        "tests.recovery_driver",
        cluster.address,
        "checkpoints/job",
        "ga",
        str(GENERATIONS),
    ]
    first, second = tmp_path / "unpacked-1", tmp_path / "unpacked-2"
    first.mkdir()
    second.mkdir()
    killed = subprocess.run(
        [*driver, "4", str(out)], timeout=300, env=env, cwd=first, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not out.exists() and not (first / "checkpoints").exists()
    ckpt = home / "ray_ft" / "checkpoints" / "job"
    assert DiskCheckpointStore(ckpt).load_latest()["generation"] == 4
    again = subprocess.run(
        [*driver, "-1", str(out)], timeout=300, env=env, cwd=second, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = json.loads(out.read_text())
    assert resumed["resumed_from"] == 4
    assert (resumed["history"], resumed["best"], resumed["evaluations"]) == summary(clean)
    assert resumed["submitted_here"] < clean.evaluations


@pytest.mark.parametrize("kind", ["ga", "cmaes"])
def test_killed_workers_and_a_removed_node_give_the_clean_result(cluster, kind):
    restore_nodes(cluster)
    clean = clean_run(kind)
    with FaultTolerantExecutor(CONFIG) as ex:
        stop, log = threading.Event(), []
        monkey = threading.Thread(target=chaos, args=(cluster, stop, log))
        monkey.start()
        try:
            faulty = optimize(
                slow_rastrigin, make_optimizer(kind), generations=GENERATIONS, executor=ex
            )
        finally:
            stop.set()
            monkey.join()
        stats = ex.stats()
    assert any(what == "kill" for what, _ in log), log
    assert stats["retries"] >= 1 and stats["failed"] == 0
    assert faulty.failed_evaluations == []
    assert summary(faulty) == summary(clean)
