"""One contract suite for every CheckpointStore, then the disk store's corruption cases."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import ray

from ray_ft import CheckpointCorruptError, CheckpointInfo, DiskCheckpointStore
from ray_ft.checkpoints.base import CHECKPOINT_KEY_ENV, CheckpointStore
from ray_ft.checkpoints.disk import _MANIFEST, DEFAULT_RUN
from tests.raytools import cluster_session, kill_manager

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


@pytest.fixture(scope="module")
def ray_session():
    with cluster_session(1) as c:
        yield c


@pytest.fixture(params=["disk", "object_store"])
def store(request, tmp_path):
    if request.param == "disk":
        yield DiskCheckpointStore(tmp_path / "ckpt", keep_last=3)
        return
    request.getfixturevalue("ray_session")
    from ray_ft import ObjectStoreCheckpointStore, get_manager

    manager = get_manager(state_dir=str(tmp_path / "mgr"))
    yield ObjectStoreCheckpointStore(f"test-{tmp_path.name}", manager=manager, keep_last=3)
    kill_manager()


def state(step):
    return {
        "generation": step,
        "weights": np.arange(1000, dtype=np.float64) * step,
        "nested": {"list": [step, "x"]},
    }


# -- the contract ------------------------------------------------------------------------


def test_is_a_checkpoint_store(store):
    assert isinstance(store, CheckpointStore)


def test_empty_store(store):
    assert store.load_latest() is None
    assert store.list() == []
    with pytest.raises(CheckpointCorruptError):
        store.load(5)


def test_save_load_round_trip(store):
    info = store.save(state(1), step=1)
    assert isinstance(info, CheckpointInfo) and info.step == 1 and info.size_bytes > 0
    loaded = store.load(1)
    assert loaded["nested"] == {"list": [1, "x"]}
    assert np.array_equal(loaded["weights"], state(1)["weights"])


def test_latest_list_and_keep_last(store):
    for step in (1, 2, 3, 4, 5):
        store.save(state(step), step=step)
    assert [i.step for i in store.list()] == [3, 4, 5]
    assert store.load_latest()["generation"] == 5
    store.delete(5)
    assert store.load_latest()["generation"] == 4
    store.delete(99)  # absent: no error


def test_resave_same_step_replaces(store):
    store.save(state(1), step=1)
    store.save({"generation": "again"}, step=1)
    assert store.load(1) == {"generation": "again"}
    assert [i.step for i in store.list()] == [1]


@pytest.mark.parametrize("step", [-1, "../../etc", 1.5, True])
def test_bad_steps_refused(store, step):
    with pytest.raises(ValueError, match="step"):
        store.save({}, step=step)


def test_checkpoint_info_pickles():
    info = CheckpointInfo(3, "/x", 1.0, 10)
    assert pickle.loads(pickle.dumps(info)) == info


# -- disk corruption cases ---------------------------------------------------------------


@pytest.fixture
def disk(tmp_path):
    store = DiskCheckpointStore(tmp_path / "ckpt", keep_last=None)
    store.save(state(1), step=1)
    store.save(state(2), step=2)
    return store


def folder(store, step, run=DEFAULT_RUN):
    return store.root / f"run-{run}" / f"step_{step:010d}"


def array_file(store, step=2):
    (path,) = folder(store, step).glob("array-*.npy")
    return path


def truncate(store):
    path = array_file(store)
    path.write_bytes(path.read_bytes()[:-10])


def flip_byte(store):
    path = array_file(store)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_manifest(store):
    (folder(store, 2) / _MANIFEST).unlink()


def garble_manifest(store):
    (folder(store, 2) / _MANIFEST).write_text("{not json")


def drop_state(store):
    (path,) = folder(store, 2).glob("state-*.json")
    path.unlink()


def empty_array(store):
    array_file(store).write_bytes(b"")


@pytest.mark.parametrize(
    "damage", [truncate, flip_byte, drop_manifest, garble_manifest, drop_state, empty_array]
)
def test_damaged_latest_is_skipped_and_refused(disk, damage, caplog):
    damage(disk)
    with caplog.at_level("WARNING"):
        assert disk.load_latest()["generation"] == 1
    # without a readable manifest (the commit point) there is no checkpoint to skip
    skipped = "skipping checkpoint default/2" in caplog.text
    assert damage in (drop_manifest, garble_manifest) or skipped
    with pytest.raises(CheckpointCorruptError):
        disk.load(2)
    assert disk.verify(2) is not None and disk.verify(1) is None


def test_state_is_json_and_npy_and_loads_without_pickle(disk, monkeypatch):
    names = sorted(p.name.split("-")[0] for p in folder(disk, 2).iterdir())
    assert names == ["array", "manifest.json", "state"]
    monkeypatch.setattr(pickle, "loads", None)  # no unpickling may happen
    loaded = disk.load(2)
    assert np.array_equal(loaded["weights"], state(2)["weights"])
    assert loaded["weights"].flags.writeable


def test_leftover_temp_files_are_ignored_and_cleaned(disk):
    (folder(disk, 2) / ".tmp-abc-state.json").write_bytes(b"half")
    half = disk.root / "run-default" / "step_0000000003"
    half.mkdir()
    (half / "array-x-0.npy").write_bytes(b"no manifest: a save cut short")
    assert disk.load_latest()["generation"] == 2
    assert [i.step for i in disk.list()] == [1, 2]
    assert disk.clean_temp() == 2


CRASH_BEFORE_MANIFEST = """
import sys
import ray_ft.checkpoints._files as files
real_write = files.LocalFiles.write
def write(self, path, buffers):
    if path.endswith("manifest.json"):
        import os
        os._exit(9)  # the process dies after the state files, before the manifest
    return real_write(self, path, buffers)
files.LocalFiles.write = write
from ray_ft import DiskCheckpointStore
store = DiskCheckpointStore(sys.argv[1], keep_last=None)
store.save({"generation": 3, "w": __import__("numpy").ones(10)}, step=3)
"""


def test_crash_between_state_and_manifest(disk):
    proc = subprocess.run([sys.executable, "-c", CRASH_BEFORE_MANIFEST, str(disk.root)], timeout=60)
    assert proc.returncode == 9
    assert any(folder(disk, 3).iterdir())  # state files written, no manifest
    assert disk.load_latest()["generation"] == 2
    assert [i.step for i in disk.list()] == [1, 2]


def _save_many(root, worker):
    store = DiskCheckpointStore(root, keep_last=None)
    for step in range(10):
        store.save({"worker": worker, "step": step, "blob": os.urandom(20_000)}, step=step)


def test_two_processes_saving_to_one_root(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(tmp_path, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = DiskCheckpointStore(tmp_path, keep_last=None)
    for step in range(10):
        assert store.load(step)["step"] == step  # every step intact, one writer's version


def test_signed_checkpoints(tmp_path, monkeypatch):
    store = DiskCheckpointStore(tmp_path, keep_last=None)
    store.save({"unsigned": True}, step=1)
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, "secret-1")
    store.save({"signed": True}, step=2)
    assert store.load(2) == {"signed": True}
    with pytest.raises(CheckpointCorruptError, match="not signed"):
        store.load(1)
    manifest = folder(store, 2) / _MANIFEST
    manifest.write_text(manifest.read_text().replace('"step": 2', '"step": 20'))
    with pytest.raises(CheckpointCorruptError, match="bad signature"):
        store.load(2)
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, "another-key")
    store.save({"x": 1}, step=3)
    monkeypatch.setenv(CHECKPOINT_KEY_ENV, "secret-1")
    with pytest.raises(CheckpointCorruptError, match="bad signature"):
        store.load(3)
    assert store.load_latest() is None


def test_object_store_checkpoint_outlives_its_driver(ray_session, tmp_path):
    from ray_ft import get_manager

    get_manager(state_dir=str(tmp_path))
    script = (
        "import sys, ray\n"
        "from ray_ft import ObjectStoreCheckpointStore\n"
        "ray.init(address=sys.argv[1])\n"
        "ObjectStoreCheckpointStore('handover').save({'from': 'first driver'}, step=7)\n"
    )
    subprocess.run([sys.executable, "-c", script, ray_session.address], check=True, timeout=120)
    from ray_ft import ObjectStoreCheckpointStore

    store = ObjectStoreCheckpointStore("handover")
    assert store.load_latest() == {"from": "first driver"}
    assert [i.step for i in store.list()] == [7]
    # a loader that found the first driver's object gone before the manager had noticed
    # asks for it from disk (the race once loaded nothing under load)
    (ref,) = ray.get(store.manager.get_checkpoint.remote("handover", 7, True))
    assert ray.get(ref) == {"from": "first driver"}
    kill_manager()


def test_object_store_runs_are_apart_and_survive_a_manager_restart(ray_session, tmp_path):
    """Two stores without a run id never prune or overwrite each other's checkpoints, and
    the manager's restart (Ray restarts it by design) loses none of them."""
    import ray

    from ray_ft import ObjectStoreCheckpointStore, get_manager
    from tests.raytools import wait_for

    manager = get_manager(state_dir=str(tmp_path))
    a = ObjectStoreCheckpointStore(manager=manager, keep_last=2)
    b = ObjectStoreCheckpointStore(manager=manager, keep_last=2)
    for step in (1, 2, 3):
        a.save({"job": "a", "w": np.arange(5.0) * step}, step=step)
    b.save({"job": "b"}, step=1)
    assert [i.step for i in a.list()] == [2, 3] and [i.step for i in b.list()] == [1]
    assert a.key != b.key

    def pid():
        return ray.get(manager.__ray_call__.remote(lambda self: os.getpid()), timeout=10)

    before = pid()
    ray.kill(manager, no_restart=False)

    def restarted():
        try:
            return pid() != before
        except Exception:
            return False

    wait_for(restarted, timeout=120, interval=0.5)
    loaded = a.load_latest()
    assert loaded["job"] == "a" and np.array_equal(loaded["w"], np.arange(5.0) * 3)
    assert b.load(1) == {"job": "b"}
    assert {r.run_id: r.steps for r in a.runs()} == {a.key: (2, 3), b.key: (1,)}
    kill_manager()
