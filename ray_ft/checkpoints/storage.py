"""Where a cluster keeps what must outlive a node: checkpoints and the manager's state.

One setting, in Ray Train's convention (``RunConfig(storage_path=...)``): ``FTConfig(
storage=...)`` or ``RAY_FT_STORAGE`` in the environment (so ``cluster.yaml`` or a KubeRay
manifest sets it once for every job), a folder or any ``pyarrow.fs`` URI (``s3://``,
``gs://``, a shared mount). A relative checkpoint folder and the manager's state go under
it. Unset, it is ``~/ray_ft`` on the driver's machine: stable across jobs and drivers (not
the job's working-dir copy nor the Ray session's temp dir), right for one machine.

What is *shared* is decided from the path alone (a URI, or a mount of a network filesystem);
whether the cluster spans several machines is the caller's to say (no Ray here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ray_ft.checkpoints._files import Files, open_files

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "Files",
    "is_uri",
    "node_local_mount",
    "open_storage",
    "resolve",
    "storage_root",
]

STORAGE_ENV = "RAY_FT_STORAGE"
DEFAULT_STORAGE = os.path.join("~", "ray_ft")

# Mounts of these filesystem types are reached from every machine that mounts them (NFS,
# EFS and Filestore are nfs4; the FUSE ones are bucket or cluster filesystems).
_SHARED_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "wekafs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.sshfs",
        "fuse.juicefs",
        "fuse.glusterfs",
        "fuse.ceph",
        "fuse.mountpoint-s3",
        "fuse.goofys",
        "fuse.rclone",
        "fuse.blobfuse",
        "fuse.blobfuse2",
        "fuse.alluxio-fuse",
    }
)


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (``file://`` included)."""
    return "://" in os.fspath(location)


def storage_root(setting: str | os.PathLike[str] | None = None) -> str:
    """The storage in force: ``setting``, else ``$RAY_FT_STORAGE``, else ``~/ray_ft``.

    A path comes back absolute (``~`` expanded), a URI as given.
    """
    chosen = setting if setting is not None else os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    text = os.fspath(chosen)
    if not text.strip():
        msg = (
            f"storage={text!r} is empty; pass a folder or a URI such as s3://bucket/ray_ft "
            f"(FTConfig(storage=...) or {STORAGE_ENV}), or leave it unset for ~/ray_ft"
        )
        raise ValueError(msg)
    if is_uri(text):
        return text
    return os.path.abspath(os.path.expanduser(text))


def resolve(location: str | os.PathLike[str], storage: str | os.PathLike[str] | None = None) -> str:
    """``location`` as used: a URI or an absolute path as given, a relative path under
    the storage in force (:func:`storage_root`)."""
    text = os.fspath(location)
    if is_uri(text):
        return text
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    root = storage_root(storage)
    if is_uri(root):  # the path goes before a query (?endpoint_override=...)
        base, mark, query = root.partition("?")
        return "/".join([base.rstrip("/"), *Path(expanded).parts]) + mark + query
    return os.path.normpath(os.path.join(root, expanded))


def open_storage(location: str, *, setting: str = "storage") -> Files:
    """Open ``location`` for reading and writing, or fail at once with one line naming
    ``setting`` and the fix (an unknown scheme, no pyarrow, no credentials, no access).

    Only reads and creates the folder: nothing already there is touched.
    """
    try:
        return open_files(location)
    except Exception as exc:
        if isinstance(exc.__cause__, ImportError):  # no pyarrow: the message says what to do
            msg = f"{setting}={location!r}: {exc}"
            raise ValueError(msg) from None
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        msg = (
            f"{setting}={location!r} cannot be opened ({type(exc).__name__}: {reason}); "
            "pass a folder, a shared mount, or a URI pyarrow.fs opens with the "
            "credentials of this machine (s3://bucket/prefix, gs://bucket/prefix)"
        )
        raise ValueError(msg) from None


def node_local_mount(
    location: str,
    partitions: Iterable[tuple[str, str]] | None = None,
) -> str | None:
    """The mount point holding ``location`` when it is a disk of this machine only, else
    None (a URI, or a mount of a network filesystem). ``partitions`` are
    ``(mountpoint, fstype)`` pairs; psutil's when not given."""
    if is_uri(location) and not location.startswith("file://"):
        return None
    path = Path(location.removeprefix("file://")).resolve()
    if partitions is None:
        import psutil

        partitions = [(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    best, best_type = "/", ""
    for mountpoint, fstype in partitions:
        mount = Path(mountpoint)
        if (path == mount or mount in path.parents) and len(str(mount)) >= len(best):
            best, best_type = str(mount), fstype
    return None if best_type in _SHARED_FSTYPES else best
