"""The manager actor's state file: written coalesced off the lock, read back at a restart.

``<storage>/_manager/<ray session>/manager_state.json`` holds
``FaultToleranceManager.get_state()`` (format: ``ray_ft.manager.persist``); the storage is a
folder or a ``pyarrow.fs`` URI (``ray_ft.checkpoints.storage``). The Ray session name is the
cluster's identity: Ray keeps it in the GCS store (Redis, or RocksDB's folder) and a head
restarted with GCS fault tolerance reuses it, so the new manager finds the old state; a new
cluster has a new session and starts clean. A change asks for a write; the writer thread writes
at most once a second, so a storm of reports never waits on disk. What changed in the last
second before the actor's own crash may be lost (breakers and failure windows are then a
second behind); a write is atomic (a temporary file, fsync, rename; one PUT on object storage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ray_ft.checkpoints.storage import Files
from ray_ft.config import FTConfig
from ray_ft.manager.state import FaultToleranceManager

__all__ = ["StateWriter", "load_manager"]

log = logging.getLogger(__name__)

_WRITE_EVERY_S = 1.0  # the state file is written at most this often (coalesced)


class StateWriter:
    """Writes ``snapshot()`` (taken under ``lock``) to ``path`` when asked, coalesced."""

    def __init__(
        self,
        files: Files,
        path: str,
        lock: threading.RLock,
        snapshot: Callable[[], dict[str, Any]],
        stop: threading.Event,
    ) -> None:
        self.files = files
        self.path = path
        self._lock = lock
        self._snapshot = snapshot
        self._stop = stop
        self._dirty = threading.Event()
        self.version = 0  #: changes asked to be written
        self.written_version = 0  #: the last of them on disk

    def save(self) -> None:
        """Ask for the state to be written (at most once per second, by the writer)."""
        self.version += 1
        self._dirty.set()

    def wake(self) -> None:
        """Let the writer see ``stop``: it flushes what is pending, then ends."""
        self._dirty.set()

    def run(self) -> None:
        """The writer thread's loop."""
        written_at = -float("inf")
        while True:
            self._dirty.wait()
            if self._stop.is_set() and self.written_version == self.version:
                return
            pause = written_at + _WRITE_EVERY_S - time.monotonic()
            if pause > 0 and not self._stop.is_set():
                self._stop.wait(pause)  # coalesce what comes in meanwhile
            self._dirty.clear()
            with self._lock:  # a consistent snapshot; the disk write happens outside
                version = self.version
                state = self._snapshot()
            try:
                self._write(state)
                self.written_version = version
            except Exception:
                log.exception("could not write the manager state to %s", self.path)
            written_at = time.monotonic()
            if self._stop.is_set() and self.written_version == self.version:
                return

    def _write(self, state: dict[str, Any]) -> None:
        self.files.makedirs(self.path.rsplit("/", 1)[0])
        self.files.write(self.path, [json.dumps(state).encode()])


def load_manager(files: Files, path: str, config: FTConfig) -> tuple[FaultToleranceManager, bool]:
    """A manager with the persisted state, and whether there was one. A corrupt or
    unreadable file is moved aside with a warning and the manager starts fresh (the actor
    must start whatever the file holds)."""
    manager = FaultToleranceManager(config)
    try:
        state = json.loads(files.read(path))
        manager.load_state(state)
    except FileNotFoundError:
        return manager, False
    except Exception as exc:
        aside = f"{path}.corrupt-{time.time():.0f}"
        with contextlib.suppress(OSError):
            files.rename(path, aside)
        log.warning(
            "manager state %s is unreadable (%s: %s); moved it to %s and started fresh",
            path,
            type(exc).__name__,
            str(exc)[:200],
            aside,
        )
        return FaultToleranceManager(config), False
    return manager, True
