"""DiskCheckpointStore: one folder per step, written atomically, verified on load.

Write order: a private temp folder in the root, the state file and then the manifest each
fsynced, the folder fsynced, renamed into place under a lock, the root fsynced. A crash at
any point leaves either the old checkpoint or the new one, plus at worst a temp folder that
is ignored and cleaned up. The manifest holds the sha256 and size of the state file and
the format version; with RAY_FT_CHECKPOINT_KEY set it is HMAC-SHA256 signed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import mmap
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray_ft.checkpoints.base import (
    CHECKPOINT_KEY_ENV,
    CheckpointCorruptError,
    CheckpointInfo,
    check_step,
)

__all__ = ["FORMAT_VERSION", "DiskCheckpointStore"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STATE = "state.pkl"
_MANIFEST = "manifest.json"
_PREFIX = "step_"
_TMP_PREFIX = ".tmp-"
_CHUNK = 8 * 2**20
_IntList = list[int]  # the class defines a method named list


class DiskCheckpointStore:
    """Checkpoints under ``root``; keeps the newest ``keep_last`` (None keeps all)."""

    def __init__(self, root: str | os.PathLike[str], keep_last: int | None = 3) -> None:
        if keep_last is not None and keep_last < 1:
            msg = f"keep_last={keep_last!r} is not valid; pass a positive int or None"
            raise ValueError(msg)
        self.root = Path(root)
        self.keep_last = keep_last
        self.root.mkdir(parents=True, exist_ok=True)

    # -- the protocol --------------------------------------------------------------------

    def save(self, state: Any, *, step: int) -> CheckpointInfo:
        """Pickle ``state`` and write it atomically as checkpoint ``step``."""
        step = check_step(step)
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = self.root / f"{_TMP_PREFIX}{_PREFIX}{step:010d}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            digest = _write_synced(tmp / _STATE, payload)
            manifest: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "created_at": time.time(),
                "files": {_STATE: {"sha256": digest, "size": len(payload)}},
            }
            key = _signing_key()
            if key is not None:
                manifest["hmac"] = _sign(manifest, key)
            _write_synced(tmp / _MANIFEST, json.dumps(manifest, sort_keys=True).encode())
            _fsync_dir(tmp)
            target = self._folder(step)
            with self._locked():
                if target.exists():
                    trash = self.root / f"{_TMP_PREFIX}old-{uuid.uuid4().hex}"
                    os.rename(target, trash)
                    os.rename(tmp, target)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.rename(tmp, target)
                _fsync_dir(self.root)
                self._prune()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CheckpointInfo(step, str(target), manifest["created_at"], len(payload))

    def load(self, step: int) -> Any:
        """The state at ``step``, verified; CheckpointCorruptError when it cannot be trusted."""
        folder = self._folder(check_step(step))
        manifest = self._manifest(folder)
        entry = manifest.get("files", {}).get(_STATE)
        if not isinstance(entry, dict):
            msg = f"checkpoint {folder} has a manifest without its state file entry"
            raise CheckpointCorruptError(msg)
        try:
            payload = _map(folder / _STATE)
        except (OSError, ValueError) as exc:
            msg = f"checkpoint {folder} lacks its state file: {exc}"
            raise CheckpointCorruptError(msg) from exc
        if len(payload) != entry.get("size") or hashlib.sha256(payload).hexdigest() != entry.get(
            "sha256"
        ):
            msg = f"checkpoint {folder} fails its sha256 check (truncated or altered)"
            raise CheckpointCorruptError(msg)
        try:
            return pickle.loads(payload)
        except Exception as exc:
            msg = f"checkpoint {folder} cannot be unpickled: {exc}"
            raise CheckpointCorruptError(msg) from exc

    def load_latest(self) -> Any | None:
        """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
        for step in reversed(self._steps()):
            try:
                return self.load(step)
            except CheckpointCorruptError as exc:
                log.warning("skipping checkpoint %d: %s", step, exc)
        return None

    def list(self) -> list[CheckpointInfo]:
        """Checkpoints with a readable manifest, oldest first (not verified: see verify())."""
        infos = []
        for step in self._steps():
            folder = self._folder(step)
            try:
                manifest = json.loads((folder / _MANIFEST).read_text())
                size = int(manifest["files"][_STATE]["size"])
                created = float(manifest["created_at"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            infos.append(CheckpointInfo(step, str(folder), created, size))
        return infos

    def delete(self, step: int) -> None:
        """Remove one checkpoint folder."""
        with self._locked():
            shutil.rmtree(self._folder(check_step(step)), ignore_errors=True)

    # -- extras --------------------------------------------------------------------------

    def verify(self, step: int) -> str | None:
        """None when checkpoint ``step`` loads and verifies, else the reason it does not."""
        try:
            self.load(step)
        except CheckpointCorruptError as exc:
            return str(exc)
        return None

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint folder (verified or not)."""
        steps = self._steps()
        return steps[-1] if steps else None

    def clean_temp(self) -> int:
        """Delete leftover temp folders of crashed saves; returns how many."""
        count = 0
        for path in self.root.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            count += 1
        return count

    # -- internals -----------------------------------------------------------------------

    def _folder(self, step: int) -> Path:
        return self.root / f"{_PREFIX}{step:010d}"

    def _steps(self) -> _IntList:
        steps = []
        for path in self.root.glob(f"{_PREFIX}*"):
            suffix = path.name[len(_PREFIX) :]
            if suffix.isdigit() and path.is_dir():
                steps.append(int(suffix))
        return sorted(steps)

    def _manifest(self, folder: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except FileNotFoundError as exc:
            msg = f"checkpoint {folder} has no manifest (missing or half-written)"
            raise CheckpointCorruptError(msg) from exc
        except (OSError, ValueError) as exc:
            msg = f"checkpoint {folder} has an unreadable manifest: {exc}"
            raise CheckpointCorruptError(msg) from exc
        if not isinstance(manifest, dict):
            msg = f"checkpoint {folder} has a malformed manifest"
            raise CheckpointCorruptError(msg)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            msg = (
                f"checkpoint {folder} has format_version={version!r}; this ray_ft reads "
                f"{FORMAT_VERSION}"
            )
            raise CheckpointCorruptError(msg)
        key = _signing_key()
        if key is not None:
            signature = manifest.get("hmac")
            if not isinstance(signature, str):
                msg = (
                    f"checkpoint {folder} is not signed but {CHECKPOINT_KEY_ENV} is set; "
                    "refusing to unpickle it"
                )
                raise CheckpointCorruptError(msg)
            unsigned = {k: v for k, v in manifest.items() if k != "hmac"}
            if not hmac.compare_digest(signature, _sign(unsigned, key)):
                msg = f"checkpoint {folder} has a bad signature (tampered, or another key)"
                raise CheckpointCorruptError(msg)
        return manifest

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for step in self._steps()[: -self.keep_last]:
            shutil.rmtree(self._folder(step), ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _map(path: Path) -> bytes | mmap.mmap:
    """The file's bytes without copying them (hashed and unpickled in place)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _signing_key() -> bytes | None:
    key = os.environ.get(CHECKPOINT_KEY_ENV)
    return key.encode() if key else None


def _sign(manifest: dict[str, Any], key: bytes) -> str:
    body = json.dumps(manifest, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _write_synced(path: Path, data: bytes) -> str:
    """Write, flush and fsync ``data``; return its sha256.

    The hash runs in a second thread while the bytes are written (both release the GIL),
    so a large checkpoint costs about max(write, hash) instead of their sum.
    """
    digest = hashlib.sha256()
    view = memoryview(data)
    hasher = threading.Thread(target=digest.update, args=(view,), daemon=True)
    hasher.start()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        remaining = view
        while remaining:
            remaining = remaining[os.write(fd, remaining[:_CHUNK]) :]
        os.fsync(fd)
    finally:
        os.close(fd)
        hasher.join()
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
