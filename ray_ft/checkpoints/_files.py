"""Where checkpoint files live: a local folder, or any ``pyarrow.fs`` URI (s3://, gs://...).

Both backends give the store the same few calls. A local write is atomic per file (temp
file, fsync, rename); an object-storage PUT is atomic by itself. There is no rename on
object storage, so the store never relies on one: it writes the state files first and the
manifest last, and the manifest is the commit point (readers list by manifest).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ArrowFiles", "Files", "LocalFiles", "open_files"]

_CHUNK = 8 * 2**20
Buffer = bytes | bytearray | memoryview


class Files(Protocol):
    """The calls a checkpoint store makes on its storage."""

    location: str

    def join(self, *parts: str) -> str: ...
    def child(self, path: str, name: str) -> str: ...
    def write(self, path: str, buffers: Sequence[Buffer]) -> tuple[str, int]: ...
    def read(self, path: str) -> bytearray: ...
    def read_hashed(self, path: str) -> tuple[bytearray, str]: ...
    def listdir(self, path: str) -> list[str]: ...
    def remove(self, path: str) -> None: ...
    def rename(self, path: str, new: str) -> None: ...
    def remove_tree(self, path: str) -> None: ...
    def makedirs(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None: ...
    def locked(self) -> contextlib.AbstractContextManager[None]: ...


def open_files(root: str | os.PathLike[str]) -> Files:
    """A local folder for a path or ``file://`` URI; pyarrow.fs for any other URI."""
    text = os.fspath(root)
    if "://" not in text:
        return LocalFiles(Path(text))
    if text.startswith("file://"):
        return LocalFiles(Path(text[len("file://") :]))
    try:
        from pyarrow import fs as pafs
    except ImportError as exc:
        msg = (
            f"checkpoint location {text!r} needs pyarrow (its filesystems reach s3://, "
            "gs://, hdfs://...); pip install 'ray-ft[arrow]', or pass a local folder"
        )
        raise ValueError(msg) from exc
    filesystem, path = pafs.FileSystem.from_uri(text)
    return ArrowFiles(filesystem, path, text)


class LocalFiles:
    """A local folder: fsynced writes, atomic renames, a file lock for the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        root.mkdir(parents=True, exist_ok=True)

    def join(self, *parts: str) -> str:
        """A path under the root, from parts relative to it."""
        return str(self.root.joinpath(*parts))

    def child(self, path: str, name: str) -> str:
        """``name`` inside the folder ``path`` (a path join already made)."""
        return str(Path(path) / name)

    def write(self, path: str, buffers: Sequence[Buffer]) -> tuple[str, int]:
        """Write to a temp name, fsync, rename into place; (sha256, size) of the bytes.

        The hash runs in a second thread while the bytes are written (both release the
        GIL), so a large file costs about max(write, hash) instead of their sum.
        """
        digest = hashlib.sha256()
        views = [memoryview(b).cast("B") for b in buffers]
        hasher = threading.Thread(target=_hash_all, args=(digest, views), daemon=True)
        hasher.start()
        target = Path(path)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for view in views:
                while view:
                    view = view[os.write(fd, view[:_CHUNK]) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            hasher.join()
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, target)
        hasher.join()
        return digest.hexdigest(), sum(len(v) for v in views)

    def read(self, path: str) -> bytearray:
        """The whole file in one buffer (read once: what is verified is what is decoded)."""
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            buffer = bytearray(size)
            view = memoryview(buffer)
            got = 0
            while got < size:
                n = fh.readinto(view[got:])
                if not n:
                    break  # the file shrank while read: the size check will refuse it
                got += n
            return buffer if got == size else buffer[:got]

    def read_hashed(self, path: str) -> tuple[bytearray, str]:
        """The whole file in one buffer and its sha256, hashed in a second thread while
        it is read (a large checkpoint costs about max(read, hash), not their sum)."""
        digest = hashlib.sha256()
        chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()

        def hash_chunks() -> None:
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)

        hasher = threading.Thread(target=hash_chunks, daemon=True)
        hasher.start()
        got = 0
        try:
            with open(path, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                buffer = bytearray(size)
                view = memoryview(buffer)
                while got < size:
                    n = fh.readinto(view[got : got + _CHUNK])
                    if not n:
                        break  # the file shrank while read: the size check will refuse it
                    chunks.put(view[got : got + n])
                    got += n
        finally:
            chunks.put(None)
            hasher.join()
        return (buffer if got == size else buffer[:got]), digest.hexdigest()

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

    def rename(self, path: str, new: str) -> None:
        os.replace(path, new)

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class ArrowFiles:
    """A ``pyarrow.fs`` filesystem (S3, GCS, HDFS...): no rename, no lock; each object
    written whole by one PUT, the manifest last."""

    def __init__(self, filesystem: Any, root: str, location: str) -> None:
        self.fs = filesystem
        self.root = root.rstrip("/")
        self.location = location
        self.fs.create_dir(self.root, recursive=True)

    def join(self, *parts: str) -> str:
        """A path under the root, from parts relative to it."""
        return "/".join([self.root, *parts])

    def child(self, path: str, name: str) -> str:
        """``name`` inside the folder ``path`` (a path join already made)."""
        return f"{path.rstrip('/')}/{name}"

    def write(self, path: str, buffers: Sequence[Buffer]) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with self.fs.open_output_stream(path) as out:
            for buffer in buffers:
                view = memoryview(buffer).cast("B")
                digest.update(view)
                out.write(view)
                size += len(view)
        return digest.hexdigest(), size

    def read(self, path: str) -> bytearray:
        try:
            with self.fs.open_input_file(path) as fh:
                return bytearray(fh.read())
        except OSError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                raise FileNotFoundError(path) from exc
            raise

    def read_hashed(self, path: str) -> tuple[bytearray, str]:
        data = self.read(path)
        return data, hashlib.sha256(data).hexdigest()

    def listdir(self, path: str) -> list[str]:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(path, allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector)]

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(path)

    def rename(self, path: str, new: str) -> None:
        self.fs.move(path, new)

    def remove_tree(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(path)

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def sync_dir(self, path: str) -> None:
        """Nothing to do: an object is durable once its PUT returns."""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """No lock on object storage: each run writes only its own prefix."""
        yield


def _hash_all(digest: Any, views: list[memoryview]) -> None:
    for view in views:
        digest.update(view)
