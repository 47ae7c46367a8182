"""The storage setting: where relative checkpoint folders and the manager's state go, what
a bad setting says, and when storage on one machine's disk is worth a warning (real files,
moto's S3 server for the URI path; no Ray)."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest
import ray
from test_checkpoint_runs import ga, sphere

from ray_ft import DiskCheckpointStore, FaultTolerantExecutor, FTConfig, optimize
from ray_ft.actors._state_writer import StateWriter, load_manager
from ray_ft.checkpoints.storage import (
    STORAGE_ENV,
    node_local_mount,
    open_storage,
    resolve,
    storage_root,
)
from ray_ft.failures import FailureEvent, FailureType
from ray_ft.manager.breaker import BreakerState
from ray_ft.runtime import storage_check
from ray_ft.runtime.storage_check import warn_if_node_local

# -- where things go -----------------------------------------------------------------------


def test_the_setting_then_the_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "env"))
    assert storage_root(str(tmp_path / "set")) == str(tmp_path / "set")
    assert storage_root() == str(tmp_path / "env")
    monkeypatch.delenv(STORAGE_ENV)
    assert storage_root() == os.path.expanduser(os.path.join("~", "ray_ft"))
    assert storage_root("s3://bucket/ray_ft") == "s3://bucket/ray_ft"
    with pytest.raises(ValueError, match=r"storage=' ' is empty.*RAY_FT_STORAGE"):
        storage_root(" ")


def test_a_relative_location_goes_under_the_storage_and_others_stay(tmp_path, monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    assert resolve("checkpoints/my_run") == str(tmp_path / "checkpoints" / "my_run")
    assert resolve("/abs/run/") == "/abs/run"
    assert resolve("gs://b/run") == "gs://b/run"
    # a URI storage keeps its query (pyarrow's options) after the path
    query = "s3://b/ft?endpoint_override=127.0.0.1:9&scheme=http"
    assert resolve("ck/run", query) == "s3://b/ft/ck/run?endpoint_override=127.0.0.1:9&scheme=http"


def test_a_store_with_a_relative_folder_is_not_in_the_working_directory(tmp_path, monkeypatch):
    """The quickstart's DiskCheckpointStore("checkpoints/my_run") under `ray job submit`
    ran in the job's working-dir copy, which a new head does not have."""
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "storage"))
    monkeypatch.chdir(tmp_path)
    store = DiskCheckpointStore("checkpoints/my_run")
    assert store.root == tmp_path / "storage" / "checkpoints" / "my_run"
    store.save({"generation": 1}, step=1)
    assert not (tmp_path / "checkpoints").exists()
    # FTConfig(storage=...) moves it (optimize() does so with its executor's config)
    moved = store.with_storage(str(tmp_path / "other"))
    assert moved.root == tmp_path / "other" / "checkpoints" / "my_run"
    absolute = DiskCheckpointStore(tmp_path / "abs")
    assert absolute.with_storage(str(tmp_path / "other")) is absolute


def test_storage_in_the_config_is_checked_and_round_trips(tmp_path):
    config = FTConfig(storage=tmp_path)  # a PathLike becomes its text
    assert config.storage == str(tmp_path)
    assert FTConfig.from_json_dict(config.to_dict()) == config
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match=r"storage=.* is not valid; pass a folder or a URI"):
            FTConfig(storage=bad)


# -- a bad setting fails at start, naming the setting ----------------------------------------


def test_an_unknown_scheme_fails_at_start_before_ray_or_any_work(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")  # without it any URI fails earlier, naming the install
    with pytest.raises(ValueError) as info:
        FaultTolerantExecutor(FTConfig(storage="nosuch://bucket/ray_ft"))
    message = str(info.value)
    assert message.startswith("FTConfig.storage='nosuch://bucket/ray_ft' cannot be opened")
    assert "s3://bucket/prefix" in message and "\n" not in message
    assert not ray.is_initialized()
    monkeypatch.setenv(STORAGE_ENV, "nosuch://bucket/ray_ft")
    with pytest.raises(ValueError, match=r"^RAY_FT_STORAGE='nosuch://bucket/ray_ft' cannot"):
        FaultTolerantExecutor()
    assert not ray.is_initialized()


def test_no_pyarrow_names_the_setting_and_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^RAY_FT_STORAGE='s3://b/x': .*ray-ft\[arrow\]"):
        open_storage("s3://b/x", setting=STORAGE_ENV)


def test_a_bucket_without_access_fails_and_touches_nothing(s3, tmp_path):
    """No such bucket on the server (as no access would): one line, and the bucket that
    exists keeps what it holds."""
    good = open_storage(s3.format("kept"))
    good.write(good.join("a.json"), [b"{}"])
    missing = s3.format("x").replace("s3://ckpt/", "s3://no-such-bucket/")
    missing = missing.replace("region=", "allow_bucket_creation=false&region=")
    with pytest.raises(ValueError, match=r"^storage='s3://no-such-bucket/x\?.*cannot be opened"):
        open_storage(missing)
    assert open_storage(s3.format("kept")).listdir(good.join()) == ["a.json"]


# -- the manager's state under the storage -----------------------------------------------------


def test_the_manager_state_round_trips_through_object_storage(s3):
    """Written by the state writer to s3://, read back by a new manager (a replaced head's):
    an open breaker stays open."""
    files = open_storage(s3.format("_manager"))
    path = files.join("session_x", "manager_state.json")
    config = FTConfig(worker_failure_threshold=0)
    manager, restored = load_manager(files, path, config)
    assert not restored
    manager.register_worker("node-a")
    manager.report_failure(
        FailureEvent(0.0, FailureType.NODE_DIED, "boom", worker_id="node-a", blame="node")
    )
    assert manager.breakers["node-a"].state is BreakerState.OPEN
    lock, stop = threading.RLock(), threading.Event()
    writer = StateWriter(files, path, lock, manager.get_state, stop)
    writer.save()
    stop.set()
    writer.run()  # flushes what is pending, then ends
    again, restored = load_manager(files, path, config)
    assert restored and again.breakers["node-a"].state is BreakerState.OPEN
    assert json.loads(files.read(path))  # one whole JSON object


# -- storage on one machine's disk -----------------------------------------------------------


def test_only_a_disk_of_this_machine_is_node_local():
    mounts = [("/", "ext4"), ("/mnt/shared", "nfs4"), ("/data", "xfs")]
    assert node_local_mount("/home/u/ray_ft", mounts) == "/"
    assert node_local_mount("/mnt/shared/ray_ft", mounts) is None
    assert node_local_mount("/data/ray_ft/x", mounts) == "/data"
    assert node_local_mount("s3://bucket/ray_ft", mounts) is None


def test_one_warning_names_the_node_and_the_setting(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(storage_check, "_warned", set())
    mounts = [("/", "ext4")]
    two = {"10.0.0.1", "10.0.0.2"}
    root = str(tmp_path)
    kwargs = {"storage": root, "node": lambda: "10.0.0.1 (abcd)", "partitions": mounts}
    with caplog.at_level(logging.WARNING, logger="ray_ft.storage"):
        # one machine: nothing to lose to another
        assert warn_if_node_local(root, hosts=lambda: {"10.0.0.1"}, **kwargs) is None
        first = warn_if_node_local(root, hosts=lambda: two, **kwargs)
        # checkpoints under the same storage: already said
        assert (
            warn_if_node_local(os.path.join(root, "ck", "run"), hosts=lambda: two, **kwargs) is None
        )
        # a shared mount: nothing to say
        shared = {**kwargs, "partitions": [("/", "ext4"), (root, "nfs4")]}
        monkeypatch.setattr(storage_check, "_warned", set())
        assert warn_if_node_local(root, hosts=lambda: two, **shared) is None
    assert first is not None
    assert "10.0.0.1 (abcd)" in first and "RAY_FT_STORAGE" in first and "FTConfig(storage" in first
    assert "manager's state" in first and "2 machines" in first
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [first]


def test_optimize_says_where_its_checkpoints_go_and_when_a_run_had_finished(tmp_path, caplog):
    store = DiskCheckpointStore(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="ray_ft.optim.run"):
        first = optimize(sphere, ga(1), generations=2, checkpoint_store=store)
        again = optimize(sphere, ga(1), generations=2, checkpoint_store=store)
    said = [r.getMessage() for r in caplog.records]
    assert any(f"checkpoints every 10 generations in {tmp_path / 'run'}" in m for m in said)
    assert any("already finished (generation 2 of 2)" in m and "resume=False" in m for m in said)
    assert again.resumed_from == 2 and again.best.fitness == first.best.fitness
