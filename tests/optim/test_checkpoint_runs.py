"""Checkpoints a user can trust: each run owns its checkpoints, loading runs no code, the
bytes verified are the bytes decoded, and a location may be object storage (a real
S3-compatible server, moto's, started here)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ray_ft import CheckpointCorruptError, DiskCheckpointStore, GeneticAlgorithm, optimize
from ray_ft.checkpoints._files import LocalFiles
from ray_ft.checkpoints.base import CHECKPOINT_KEY_ENV, PickledCheckpointError


def sphere(genome) -> float:
    return float(np.sum(np.asarray(genome) ** 2))


def ga(seed: int) -> GeneticAlgorithm:
    return GeneticAlgorithm(4, (-5.0, 5.0), population_size=8, seed=seed)


# -- a run owns its checkpoints ----------------------------------------------------------------


def test_a_fresh_run_keeps_the_others_and_resume_continues_its_own(tmp_path):
    """The issue's scenario: run A (seed 1, 10 generations), then a fresh run B (seed 2,
    3 generations) in the same folder: both runs' checkpoints stay, and resume=True
    continues B with B's settings and A with A's."""
    store = DiskCheckpointStore(tmp_path, keep_last=3)
    a = optimize(sphere, ga(1), generations=10, checkpoint_store=store, checkpoint_interval=1)
    b = optimize(
        sphere, ga(2), generations=3, checkpoint_store=store, checkpoint_interval=1, resume=False
    )
    runs = {r.run_id: r.steps for r in store.runs()}
    assert runs == {a.run_id: (8, 9, 10), b.run_id: (1, 2, 3)}
    b_again = optimize(sphere, ga(2), generations=5, checkpoint_store=store, checkpoint_interval=1)
    assert (b_again.run_id, b_again.resumed_from) == (b.run_id, 3)
    b_clean = optimize(sphere, ga(2), generations=5)
    assert b_again.best.fitness == b_clean.best.fitness  # B's answer, not A's
    assert np.array_equal(b_again.best.genome, b_clean.best.genome)
    a_again = optimize(sphere, ga(1), generations=12, checkpoint_store=store)
    assert (a_again.run_id, a_again.resumed_from) == (a.run_id, 10)
    assert {r.run_id: r.steps for r in store.runs()}[b.run_id] == (3, 4, 5)


def test_resume_refuses_a_folder_of_another_run(tmp_path):
    store = DiskCheckpointStore(tmp_path)
    a = optimize(sphere, ga(1), generations=2, checkpoint_store=store)
    with pytest.raises(ValueError, match="resume=False") as info:
        optimize(sphere, ga(7), generations=2, checkpoint_store=store)
    assert a.run_id in str(info.value) and "seed=7" in str(info.value)
    other_objective = GeneticAlgorithm(4, (-5.0, 5.0), population_size=8, seed=1)
    with pytest.raises(ValueError, match="another run"):
        optimize(lambda g: sphere(g), other_objective, generations=2, checkpoint_store=store)
    assert [r.run_id for r in store.runs()] == [a.run_id]  # nothing was touched


# -- loading runs no code ------------------------------------------------------------------------


class Opaque:
    """A user's object that only pickle can store."""

    def __init__(self, value: int) -> None:
        self.value = value


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_state_loads_only_when_allowed_or_signed(tmp_path, monkeypatch):
    store = DiskCheckpointStore(tmp_path / "c")
    store.save({"model": Opaque(3)}, step=1)
    with pytest.raises(PickledCheckpointError, match="allow_pickle=True"):
        store.load(1)
    with pytest.raises(PickledCheckpointError):
        store.load_latest()  # refused, not silently skipped (a resume would start over)
    assert DiskCheckpointStore(tmp_path / "c", allow_pickle=True).load(1)["model"].value == 3
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, "k")
    store.save({"model": Opaque(4)}, step=2)
    assert store.load(2)["model"].value == 4  # signed by this key: trusted


def test_a_checkpoint_from_elsewhere_never_runs_code(tmp_path, monkeypatch):
    """A manifest that claims pickle, with a payload that would run a command: refused
    before a byte of it is unpickled."""
    monkeypatch.chdir(tmp_path)
    store = DiskCheckpointStore(tmp_path / "c", allow_pickle=True)
    store.save({"x": Opaque(1)}, step=1)
    (state,) = (tmp_path / "c" / "run-default" / "step_0000000001").glob("state-*.pkl")
    evil = pickle.dumps(Payload())
    state.write_bytes(evil)
    manifest_path = state.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][state.name] = {
        "sha256": __import__("hashlib").sha256(evil).hexdigest(),
        "size": len(evil),
    }
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PickledCheckpointError):
        DiskCheckpointStore(tmp_path / "c").load(1)
    assert not (tmp_path / "pwned").exists()


def test_the_built_in_optimizers_state_needs_no_pickle(tmp_path, monkeypatch):
    store = DiskCheckpointStore(tmp_path)
    optimize(sphere, ga(3), generations=3, checkpoint_store=store, checkpoint_interval=1)
    (run,) = store.runs()
    manifests = list(tmp_path.glob(f"run-{run.run_id}/step_*/manifest.json"))
    assert {json.loads(m.read_text())["encoding"] for m in manifests} == {"json+npy"}
    monkeypatch.setattr(pickle, "loads", None)
    resumed = optimize(sphere, ga(3), generations=5, checkpoint_store=store)
    assert resumed.resumed_from == 3
    assert resumed.best.fitness == optimize(sphere, ga(3), generations=5).best.fitness


# -- integrity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
def test_a_checkpoint_moved_to_another_step_or_run_is_refused(tmp_path, monkeypatch, signed):
    if signed:
        monkeypatch.setenv(CHECKPOINT_KEY_ENV, "k")
    store = DiskCheckpointStore(tmp_path, keep_last=None)
    store.save({"generation": 1}, step=1)
    store.save({"generation": 5}, step=5)
    old = tmp_path / "run-default" / "step_0000000001"
    shutil.rmtree(tmp_path / "run-default" / "step_0000000005")
    shutil.copytree(old, tmp_path / "run-default" / "step_0000000009")  # a rollback
    with pytest.raises(CheckpointCorruptError, match="moved or copied"):
        store.load(9)
    assert store.load_latest() == {"generation": 1}
    shutil.copytree(old, tmp_path / "run-other" / "step_0000000001")
    with pytest.raises(CheckpointCorruptError, match="moved or copied"):
        store.for_run("other").load(1)


def test_each_file_is_read_once_and_what_is_verified_is_decoded(tmp_path, monkeypatch):
    store = DiskCheckpointStore(tmp_path)
    store.save({"w": np.arange(100.0), "v": np.ones(3)}, step=1)
    reads: list[str] = []
    real = LocalFiles.read

    def spy(self, path):
        reads.append(os.path.basename(path))
        return real(self, path)

    monkeypatch.setattr(LocalFiles, "read", spy)
    real_hashed = LocalFiles.read_hashed

    def spy_hashed(self, path):
        reads.append(os.path.basename(path))
        return real_hashed(self, path)

    monkeypatch.setattr(LocalFiles, "read_hashed", spy_hashed)
    loaded = store.for_run("default").load(1)
    assert np.array_equal(loaded["w"], np.arange(100.0))
    assert sorted(reads) == sorted(set(reads))  # no file read twice
    assert len(reads) == 4  # manifest, document, two arrays


def test_a_truncated_file_is_corrupt_never_a_crash(tmp_path):
    store = DiskCheckpointStore(tmp_path)
    store.save({"w": np.arange(1_000_000.0)}, step=1)
    (array,) = (tmp_path / "run-default" / "step_0000000001").glob("array-*.npy")
    with open(array, "r+b") as fh:
        fh.truncate(4096)
    with pytest.raises(CheckpointCorruptError, match="size or sha256"):
        store.load(1)


# -- object storage (a real S3-compatible server) --------------------------------------------


def test_s3_checkpoints_round_trip_with_runs_and_pruning(s3):
    store = DiskCheckpointStore(s3.format("roundtrip"), keep_last=2)
    mine = store.for_run("mine", fingerprint="f1")
    theirs = store.for_run("theirs", fingerprint="f2")
    for step in (1, 2, 3):
        mine.save({"generation": step, "w": np.arange(10.0) * step}, step=step)
    theirs.save({"generation": 99}, step=1)
    assert [i.step for i in mine.list()] == [2, 3]
    assert [i.step for i in theirs.list()] == [1]
    loaded = mine.load_latest()
    assert loaded["generation"] == 3 and np.array_equal(loaded["w"], np.arange(10.0) * 3)
    assert {r.run_id: r.fingerprint for r in store.runs()} == {"mine": "f1", "theirs": "f2"}
    fresh = optimize(sphere, ga(5), generations=2, checkpoint_store=store, resume=False)
    resumed = optimize(sphere, ga(5), generations=3, checkpoint_store=store)
    assert (resumed.run_id, resumed.resumed_from) == (fresh.run_id, 2)


S3_WRITER_KILLED = """
import os, sys
import ray_ft.checkpoints._files as files
real_write = files.ArrowFiles.write
def write(self, path, buffers):
    if path.endswith("manifest.json") and "step_0000000002" in path:
        os._exit(9)  # killed between the state objects and the manifest
    return real_write(self, path, buffers)
files.ArrowFiles.write = write
from ray_ft import DiskCheckpointStore
store = DiskCheckpointStore(sys.argv[1], keep_last=None)
store.save({"generation": 1}, step=1)
store.save({"generation": 2}, step=2)
"""


def test_s3_writer_killed_between_state_and_manifest(s3):
    location = s3.format("killed")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.run([sys.executable, "-c", S3_WRITER_KILLED, location], timeout=120, env=env)
    assert proc.returncode == 9
    store = DiskCheckpointStore(location, keep_last=None)
    assert [i.step for i in store.list()] == [1]  # step 2 has state objects, no manifest
    assert store.load_latest() == {"generation": 1}
    assert store.clean_temp() >= 1  # the orphaned state objects
