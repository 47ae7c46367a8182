"""DiskCheckpointStore: checkpoints owned by their run, code-free, verified on load.

Layout: ``<root>/run-<run id>/step_<step>/`` holding the state files and ``manifest.json``.
A run is one optimization (``optimize()`` names it and a fingerprint of what makes its
resume exact); pruning keeps the newest ``keep_last`` steps of each run, so a fresh run
never deletes another's. The state is stored as JSON + ``.npy`` arrays whenever it is
plain data (the built-in optimizers' state always is), so loading runs no code; pickle is
the fallback for anything else, and loading it needs a valid signature
(``RAY_FT_CHECKPOINT_KEY``) or ``allow_pickle=True``.

Write order: the state files (unique names, each written whole and fsynced), then the
manifest, which is the commit point: a crash leaves either the old checkpoint or the new
one. This holds on object storage too (``root`` may be a ``pyarrow.fs`` URI such as
``s3://bucket/prefix``), which has no rename. Loading reads each file once, checks its
size and sha256 against the manifest and decodes those same bytes; the manifest must name
the run and step it is found under (a signed manifest cannot be moved to another step).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

from ray_ft._errors import invalid
from ray_ft.checkpoints._files import Files, open_files
from ray_ft.checkpoints.base import (
    CHECKPOINT_KEY_ENV,
    CheckpointCorruptError,
    CheckpointInfo,
    PickledCheckpointError,
    RunInfo,
    check_run_id,
    check_step,
)
from ray_ft.checkpoints.codec import decode, decode_npy, encode, npy_buffers
from ray_ft.checkpoints.storage import is_uri, resolve

__all__ = ["DEFAULT_RUN", "FORMAT_VERSION", "DiskCheckpointStore"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
DEFAULT_RUN = "default"  # the run of a store used without optimize() naming one
_MANIFEST = "manifest.json"
_RUN_PREFIX = "run-"
_STEP_PREFIX = "step_"
# the class defines a method named list: annotations inside it use these
_InfoList = list[CheckpointInfo]
_IntList = list[int]
_StrList = list[str]
_RunList = list[RunInfo]
_AnyList = list[Any]


class DiskCheckpointStore:
    """Checkpoints under ``root`` (a folder, or a pyarrow.fs URI); keeps the newest
    ``keep_last`` of each run (None keeps all).

    A relative ``root`` goes under the storage in force (``storage``, else
    ``$RAY_FT_STORAGE``, else ``~/ray_ft``: ``ray_ft.checkpoints.storage``), never under
    the working directory a job happens to run in.

    A store made by ``DiskCheckpointStore(root)`` is unbound: it saves under the run
    ``"default"`` and loads across runs. ``for_run(run_id, fingerprint=...)`` gives the
    same store bound to one run, as ``optimize()`` uses it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep_last: int | None = 3,
        *,
        allow_pickle: bool = False,
        run_id: str | None = None,
        fingerprint: str | None = None,
        describe: dict[str, Any] | None = None,
        files: Files | None = None,
        storage: str | os.PathLike[str] | None = None,
    ) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 1):
            raise invalid("keep_last", keep_last, "a positive int or None")
        location = resolve(root, storage)
        self._files = files if files is not None else open_files(location)
        self.root: Path | str = location if is_uri(location) else Path(location)
        #: the folder as given when it was relative (re-resolved by ``with_storage``)
        given = os.fspath(root)
        relative = not is_uri(given) and not os.path.isabs(os.path.expanduser(given))
        self.relative_root = given if relative else None
        self.keep_last = keep_last
        self.allow_pickle = allow_pickle
        self.run_id = None if run_id is None else check_run_id(run_id)
        self.fingerprint = fingerprint
        self.describe = dict(describe or {})

    def with_storage(self, storage: str | os.PathLike[str] | None) -> DiskCheckpointStore:
        """This store under another storage (``FTConfig.storage``) when its folder was given
        relative; itself otherwise."""
        if self.relative_root is None or storage is None:
            return self
        store = DiskCheckpointStore(
            self.relative_root,
            self.keep_last,
            allow_pickle=self.allow_pickle,
            run_id=self.run_id,
            fingerprint=self.fingerprint,
            describe=self.describe,
            storage=storage,
        )
        return self if store.root == self.root else store

    def for_run(
        self,
        run_id: str,
        *,
        fingerprint: str | None = None,
        describe: dict[str, Any] | None = None,
    ) -> DiskCheckpointStore:
        """This store bound to one run: saves are that run's, pruning is within it."""
        return DiskCheckpointStore(
            self.root,
            self.keep_last,
            allow_pickle=self.allow_pickle,
            run_id=run_id,
            fingerprint=fingerprint,
            describe=describe,
            files=self._files,
        )

    # -- the protocol --------------------------------------------------------------------

    def save(self, state: Any, *, step: int) -> CheckpointInfo:
        """Write ``state`` as checkpoint ``step`` of this store's run; the manifest last.

        Saves to one local folder are serialized by a file lock (two processes saving the
        same step must not sweep each other's files); object storage has no lock: there
        each run is written by one process.
        """
        step = check_step(step)
        run_id = self.run_id or DEFAULT_RUN
        encoded = encode(state)
        blob = None if encoded is not None else pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
        with self._files.locked():
            manifest = self._write(run_id, step, encoded, blob)
            self._prune(run_id)
        size = sum(entry["size"] for entry in manifest["files"].values())
        folder = self._folder(run_id, step)
        return CheckpointInfo(step, folder, manifest["created_at"], size, run_id)

    def _write(
        self,
        run_id: str,
        step: int,
        encoded: tuple[bytes, _AnyList] | None,
        blob: bytes | None,
    ) -> dict[str, Any]:
        folder = self._folder(run_id, step)
        self._files.makedirs(folder)
        save_id = uuid.uuid4().hex[:12]
        written: dict[str, dict[str, Any]] = {}

        def put(name: str, buffers: _AnyList) -> None:
            digest, size = self._files.write(self._files.child(folder, name), buffers)
            written[name] = {"sha256": digest, "size": size}

        arrays: _StrList = []
        if encoded is not None:
            document, values = encoded
            for index, array in enumerate(values):
                arrays.append(f"array-{save_id}-{index}.npy")
                put(arrays[-1], npy_buffers(array))
            name, encoding = f"state-{save_id}.json", "json+npy"
            put(name, [document])
        else:
            name, encoding = f"state-{save_id}.pkl", "pickle"
            put(name, [blob])
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "run_id": run_id,
            "step": step,
            "fingerprint": self.fingerprint,
            "describe": self.describe,
            "created_at": time.time(),
            "encoding": encoding,
            "document": name,
            "arrays": arrays,
            "files": written,
        }
        key = _signing_key()
        if key is not None:
            manifest["hmac"] = _sign(manifest, key)
        self._files.write(
            self._files.child(folder, _MANIFEST), [json.dumps(manifest, sort_keys=True).encode()]
        )
        self._files.sync_dir(folder)
        self._sweep(folder, set(written) | {_MANIFEST})  # the files of an earlier save
        return manifest

    def load(self, step: int) -> Any:
        """The state at ``step`` (of this run; unbound: of the newest run holding it),
        verified; CheckpointCorruptError when it cannot be trusted."""
        step = check_step(step)
        if self.run_id is not None:
            return self._load(self.run_id, step)
        holders = [i for i in self._all_infos() if i.step == step]
        if not holders:
            msg = f"no checkpoint at step {step} in {self._files.location}"
            raise CheckpointCorruptError(msg)
        return self._load(holders[-1].run_id, step)

    def load_latest(self) -> Any | None:
        """The newest checkpoint that verifies (of this run; unbound: of any run); damaged
        ones are skipped with a warning. Pickled state that may not be loaded raises."""
        for info in reversed(self.list()):
            try:
                return self._load(info.run_id, info.step)
            except PickledCheckpointError:
                raise
            except CheckpointCorruptError as exc:
                log.warning("skipping checkpoint %s/%d: %s", info.run_id, info.step, exc)
        return None

    def list(self) -> _InfoList:
        """Checkpoints with a readable manifest, oldest first (not verified: see verify());
        a bound store lists its run's, an unbound one every run's."""
        if self.run_id is not None:
            return self._run_infos(self.run_id)
        return self._all_infos()

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` of this store's run (unbound: of every run)."""
        step = check_step(step)
        runs = [self.run_id] if self.run_id is not None else self._run_ids()
        with self._files.locked():
            for run_id in runs:
                self._files.remove_tree(self._folder(run_id, step))

    # -- runs ----------------------------------------------------------------------------

    def runs(self) -> _RunList:
        """Every run in the folder with its steps, oldest activity first."""
        runs = []
        for run_id in self._run_ids():
            infos = self._run_infos(run_id)
            if not infos:
                continue
            newest = self._peek(run_id, infos[-1].step) or {}
            runs.append(
                RunInfo(
                    run_id,
                    newest.get("fingerprint"),
                    tuple(i.step for i in infos),
                    max(i.created_at for i in infos),
                    dict(newest.get("describe") or {}),
                )
            )
        return sorted(runs, key=lambda r: r.updated_at)

    # -- extras --------------------------------------------------------------------------

    def verify(self, step: int) -> str | None:
        """None when checkpoint ``step`` loads and verifies, else the reason it does not."""
        try:
            self.load(step)
        except CheckpointCorruptError as exc:
            return str(exc)
        return None

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint (verified or not)."""
        infos = self.list()
        return infos[-1].step if infos else None

    def clean_temp(self) -> int:
        """Delete leftovers of crashed saves (temp files, files no manifest names)."""
        count = 0
        with self._files.locked():
            for run_id in self._run_ids():
                for step in self._steps(run_id):
                    folder = self._folder(run_id, step)
                    manifest = self._peek(run_id, step)
                    keep = {_MANIFEST, *((manifest or {}).get("files") or {})}
                    count += self._sweep(folder, keep if manifest else {_MANIFEST})
        return count

    # -- internals -----------------------------------------------------------------------

    def _folder(self, run_id: str, step: int) -> str:
        return self._files.join(f"{_RUN_PREFIX}{run_id}", f"{_STEP_PREFIX}{step:010d}")

    def _run_ids(self) -> _StrList:
        names = self._files.listdir(self._files.join())
        return sorted(n[len(_RUN_PREFIX) :] for n in names if n.startswith(_RUN_PREFIX))

    def _steps(self, run_id: str) -> _IntList:
        steps: _IntList = []
        for name in self._files.listdir(self._files.join(f"{_RUN_PREFIX}{run_id}")):
            suffix = name[len(_STEP_PREFIX) :]
            if name.startswith(_STEP_PREFIX) and suffix.isdigit():
                steps.append(int(suffix))
        return sorted(steps)

    def _peek(self, run_id: str, step: int) -> dict[str, Any] | None:
        """A manifest's JSON, unverified (for listing); None when unreadable."""
        try:
            raw = self._files.read(self._files.child(self._folder(run_id, step), _MANIFEST))
            manifest = json.loads(bytes(raw))
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _run_infos(self, run_id: str) -> _InfoList:
        infos = []
        for step in self._steps(run_id):
            manifest = self._peek(run_id, step)
            try:
                assert manifest is not None
                size = sum(int(e["size"]) for e in manifest["files"].values())
                created = float(manifest["created_at"])
            except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
                continue  # no manifest yet (a save under way or cut short): not a checkpoint
            infos.append(CheckpointInfo(step, self._folder(run_id, step), created, size, run_id))
        return infos

    def _all_infos(self) -> _InfoList:
        infos = [i for run_id in self._run_ids() for i in self._run_infos(run_id)]
        return sorted(infos, key=lambda i: (i.created_at, i.step))

    def _load(self, run_id: str, step: int) -> Any:
        folder = self._folder(run_id, step)
        manifest = self._manifest(folder, run_id, step)
        if manifest.get("encoding") == "pickle" and not (self.allow_pickle or "hmac" in manifest):
            msg = (
                f"checkpoint {folder} holds pickled state (an object that is not plain "
                "data); loading it would run code. Set RAY_FT_CHECKPOINT_KEY to sign "
                "checkpoints, or pass allow_pickle=True to the store if you trust this folder"
            )
            raise PickledCheckpointError(msg)
        files = manifest.get("files")
        if not isinstance(files, dict):
            msg = f"checkpoint {folder} has a manifest without its files"
            raise CheckpointCorruptError(msg)

        def verified(name: Any) -> bytearray:
            entry = files.get(name) if isinstance(name, str) else None
            if not isinstance(entry, dict) or "/" in name:
                msg = f"checkpoint {folder} names a file its manifest does not list: {name!r}"
                raise CheckpointCorruptError(msg)
            try:
                data, digest = self._files.read_hashed(self._files.child(folder, name))
            except OSError as exc:
                msg = f"checkpoint {folder} lacks {name}: {exc}"
                raise CheckpointCorruptError(msg) from exc
            if len(data) != entry.get("size") or digest != entry.get("sha256"):
                msg = (
                    f"checkpoint {folder}: {name} fails its size or sha256 check "
                    "(truncated or altered)"
                )
                raise CheckpointCorruptError(msg)
            return data

        try:
            if manifest.get("encoding") == "pickle":
                return pickle.loads(verified(manifest.get("document")))
            arrays = [decode_npy(verified(name)) for name in manifest.get("arrays") or []]
            return decode(verified(manifest.get("document")), arrays)
        except CheckpointCorruptError:
            raise
        except Exception as exc:
            msg = f"checkpoint {folder} cannot be decoded: {type(exc).__name__}: {exc}"
            raise CheckpointCorruptError(msg) from exc

    def _manifest(self, folder: str, run_id: str, step: int) -> dict[str, Any]:
        try:
            manifest = json.loads(bytes(self._files.read(self._files.child(folder, _MANIFEST))))
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
                msg = f"checkpoint {folder} is not signed but {CHECKPOINT_KEY_ENV} is set"
                raise CheckpointCorruptError(msg)
            unsigned = {k: v for k, v in manifest.items() if k != "hmac"}
            if not hmac.compare_digest(signature, _sign(unsigned, key)):
                msg = f"checkpoint {folder} has a bad signature (tampered, or another key)"
                raise CheckpointCorruptError(msg)
        else:
            manifest.pop("hmac", None)  # a signature nobody can check vouches for nothing
        if manifest.get("run_id") != run_id or manifest.get("step") != step:
            msg = (
                f"checkpoint {folder} says it is step {manifest.get('step')!r} of run "
                f"{manifest.get('run_id')!r}: it was moved or copied here; refusing it"
            )
            raise CheckpointCorruptError(msg)
        return manifest

    def _sweep(self, folder: str, keep: set[str]) -> int:
        """Remove files of earlier saves of this step (and temp leftovers)."""
        removed = 0
        for name in self._files.listdir(folder):
            if name not in keep:
                self._files.remove(self._files.child(folder, name))
                removed += 1
        return removed

    def _prune(self, run_id: str) -> None:
        if self.keep_last is None:
            return
        for step in self._steps(run_id)[: -self.keep_last]:
            self._files.remove_tree(self._folder(run_id, step))


def _signing_key() -> bytes | None:
    key = os.environ.get(CHECKPOINT_KEY_ENV)
    return key.encode() if key else None


def _sign(manifest: dict[str, Any], key: bytes) -> str:
    body = json.dumps(manifest, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()
