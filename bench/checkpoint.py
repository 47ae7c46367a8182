"""Figure 6: checkpoint save/load vs raw write+fsync / read of the same state.

The ratio is raw time / store time: 1.0 means the store costs nothing over writing the
pickled bytes and fsyncing them (pickle + write + fsync; read + unpickle); the goal is
>= 0.91 (a checkpoint within 1.1x of a raw write). DiskCheckpointStore writes the state as
JSON + .npy (no pickle on load); ObjectStoreCheckpointStore puts it, the manager actor
takes ownership and keeps a copy on its disk (so a manager restart loses none).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
from common import local_cluster, summary, table

from ray_ft import DiskCheckpointStore

GOAL = 1 / 1.1

SIZES_MB = (10, 200)


def state_of(mb: int) -> dict:
    rng = np.random.default_rng(0)
    return {"generation": 1, "population": rng.random(mb * 2**20 // 8), "history": [1.0] * 100}


def raw_write(path: str, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(mb: int, repeats: int, root: str) -> dict:
    # keep_last=None: pruning (deleting old checkpoints) is done outside the timed part
    store = DiskCheckpointStore(os.path.join(root, f"store{mb}"), keep_last=None)
    return interleaved(store, state_of(mb), repeats, root)


def measure_object_store(mb: int, repeats: int, root: str) -> dict:
    """The same state through ObjectStoreCheckpointStore (one-node cluster)."""
    from ray_ft import ObjectStoreCheckpointStore, get_manager

    with local_cluster(1):
        manager = get_manager(state_dir=os.path.join(root, "mgr"))
        store = ObjectStoreCheckpointStore(manager=manager, keep_last=None)
        return interleaved(store, state_of(mb), repeats, root)


def interleaved(store: Any, state: dict, repeats: int, root: str) -> dict:
    """Raw pickle + write + fsync, store save, raw read + unpickle, store load: in turn."""
    saves, loads, raw_w, raw_r = [], [], [], []
    for step in range(repeats):
        t = time.perf_counter()
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        raw_path = os.path.join(root, f"raw{step}.bin")
        raw_write(raw_path, payload)
        raw_w.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.save(state, step=step)
        saves.append(time.perf_counter() - t)
        t = time.perf_counter()
        with open(raw_path, "rb") as fh:
            pickle.loads(fh.read())
        raw_r.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.load(step)
        loads.append(time.perf_counter() - t)
        os.remove(raw_path)
        store.delete(step)
    return {
        "save": summary(saves),
        "load": summary(loads),
        "raw_write": summary(raw_w),
        "raw_read": summary(raw_r),
        "save_ratio": summary([r / s for r, s in zip(raw_w, saves)]),
        "load_ratio": summary([r / s for r, s in zip(raw_r, loads)]),
    }


def run(repeats: int = 3) -> dict:
    root = tempfile.mkdtemp(prefix="ray_ft_bench_", dir=os.getcwd())
    try:
        results = {f"disk {mb} MB": measure(mb, repeats, root) for mb in SIZES_MB}
        results["object store 200 MB"] = measure_object_store(200, repeats, root)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict) -> str:
    rows = []
    for label, r in results.items():
        for op, raw in (("save", "raw_write"), ("load", "raw_read")):
            ratio = r[f"{op}_ratio"]
            rows.append(
                [
                    f"{label} {op}",
                    f"{r[op]['median'] * 1000:.0f} ms",
                    f"{r[raw]['median'] * 1000:.0f} ms",
                    ratio["median"],
                    ratio["min"],
                    ratio["max"],
                    "≥ 0.91",
                    "met" if ratio["median"] >= GOAL else f"missed by {GOAL - ratio['median']:.2f}",
                ]
            )
    return table(
        [
            "checkpoint",
            "store",
            "raw (pickle + write + fsync / read)",
            "ratio raw/store (median)",
            "min",
            "max",
            "goal",
            "verdict",
        ],
        rows,
    )


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
