"""The ray-ft command: every subcommand and its error paths, on real files and a real cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from ray_ft import DiskCheckpointStore, get_manager
from ray_ft.tools.cli import main
from tests.raytools import kill_manager

RAY_FT = [sys.executable, "-m", "ray_ft.tools.cli"]


def run_cli(*args, timeout=300, **kwargs):
    return subprocess.run(
        [*RAY_FT, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def test_probe_json(capsys):
    assert main(["probe", "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    assert {"healthy", "reasons", "health"} <= out.keys()
    assert "cpu_percent" in out["health"] and isinstance(out["health"]["gpus"], list)


def test_probe_text(capsys):
    main(["probe"])
    out = capsys.readouterr().out
    assert out.startswith("healthy: ") and "gpus:" in out


@pytest.fixture
def store(tmp_path):
    s = DiskCheckpointStore(tmp_path / "run", keep_last=None)
    for gen in (2, 4):
        s.save(
            {
                "generation": gen,
                "history": [3.0, 1.5],
                "population": [{}] * 4,
                "evaluations": 8,
                "optimizer_state": {"kind": "GeneticAlgorithm"},
                "format_version": 1,
            },
            step=gen,
        )
    return s


def test_checkpoints_list_verify_show(store, capsys):
    assert main(["checkpoints", "list", str(store.root)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 3 and listing[0] == "run default, steps [2, 4]"
    assert listing[1].startswith("  step      2")
    assert main(["checkpoints", "verify", str(store.root)]) == 0
    assert capsys.readouterr().out.count(" ok") == 2
    assert main(["checkpoints", "show", str(store.root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["generation"] == 4 and shown["best_fitness"] == 1.5
    assert shown["optimizer"] == "GeneticAlgorithm"
    assert main(["checkpoints", "show", str(store.root), "--step", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == 2


def test_checkpoints_verify_reports_corruption(store, capsys):
    (state,) = (store.root / "run-default" / "step_0000000004").glob("state-*.json")
    state.write_bytes(state.read_bytes()[:-3])
    assert main(["checkpoints", "verify", str(store.root)]) == 1
    assert "CORRUPT" in capsys.readouterr().out
    assert main(["checkpoints", "show", str(store.root), "--step", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ray-ft: error:") and err.count("\n") == 1


def test_missing_path_is_one_line_error(tmp_path):
    proc = run_cli("checkpoints", "list", str(tmp_path / "nope"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no checkpoint folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_without_cluster_is_one_line_error():
    proc = run_cli("status", "--address", "127.0.0.1:9", timeout=60)
    assert proc.returncode == 2
    assert "no Ray cluster at 127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_flag_exits_non_zero():
    proc = run_cli("demo", "--generations", "many", timeout=60)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr
    assert "Traceback" not in proc.stderr


CLUSTER_NODES = 2  # the shared cluster fixture (tests/conftest.py) starts two nodes


@pytest.mark.cluster
def test_status_on_a_live_cluster(cluster, tmp_path):
    proc = run_cli("status", "--address", cluster.address, "--json", timeout=60)
    assert proc.returncode == 2 and "no ray_ft manager" in proc.stderr
    manager = get_manager({"health_check_interval": 0.5}, state_dir=str(tmp_path))
    node = ray.nodes()[0]["NodeID"]
    ray.get(manager.open_breaker.remote(node))
    ray.get(manager.probe_now.remote())
    proc = run_cli("status", "--address", cluster.address, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["nodes"][node]["breaker"] == "OPEN"
    assert len(status["nodes"]) == 2
    text = run_cli("status", "--address", cluster.address, timeout=120)
    assert text.returncode == 0 and "OPEN" in text.stdout and "last checkpoint" in text.stdout
    why = run_cli("why", node[:8], "--address", cluster.address, timeout=120)
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith(f"node {node}:") and "CLOSED -> OPEN" in why.stdout
    unknown = run_cli("why", "zzzz", "--address", cluster.address, timeout=120)
    assert unknown.returncode == 2 and "no node id starts with 'zzzz'" in unknown.stderr
    kill_manager()


def _as_from_a_terminal() -> None:
    """SIGINT as a shell gives it: not blocked, not ignored. Inside the whole suite the
    demo ran to its end through the SIGINT twice (exit 0), never alone: a mask or an
    ignore inherited from the test process is the suspect (not pinned down)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.cluster
def test_demo_interrupted_then_resumed(tmp_path):
    """SIGINT mid-run leaves a valid checkpoint; --resume finishes identical to a clean run."""
    ckpt = tmp_path / "demo"
    # 24 generations of ~0.45 s here: the interrupt after the third lands with ~9 s to spare
    # (with 14, one CI run's demo finished before it: exit 0)
    args = ["demo", "--generations", "24", "--population", "12", "--checkpoint-dir", str(ckpt)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*RAY_FT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=_as_from_a_terminal,
    )
    deadline = time.monotonic() + 180
    store = DiskCheckpointStore(ckpt) if ckpt.exists() else None
    while time.monotonic() < deadline:
        if ckpt.exists():
            store = DiskCheckpointStore(ckpt)
            if (store.latest_step() or 0) >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "ray-ft demo --resume" in out
    assert store is not None
    interrupted_at = DiskCheckpointStore(ckpt).load_latest()["generation"]
    assert 3 <= interrupted_at < 24

    done = run_cli(*args, "--resume", "--verify", cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert re.search(rf"resumed from\s+generation {interrupted_at}\n", done.stdout)
    assert re.search(r"lost evaluations\s+0\n", done.stdout)
    assert "identical to a fault-free reference run: yes" in done.stdout
    assert Path(ckpt).exists()
