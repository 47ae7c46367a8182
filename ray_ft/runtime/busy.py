"""Executors' loops with work in flight, and the one thread that watches Ray under them.

A loop with work in flight is held in ``BUSY`` so that a dropped executor finishes its work
(the loop's thread holds only a weak reference); it is released when the loop goes idle.
While any loop is busy, one daemon thread looks every half second whether the user shut Ray
down (``ray.shutdown()``): a loop's thread caught in ``ray.wait`` then may never come back
(Ray's core worker is gone under it), so the watch ends that loop's calls instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["BUSY", "watch_for_ray_gone"]

BUSY: set[Any] = set()  # Loops; changed under each loop's own lock
_CHECK_S = 0.5
_watch: threading.Thread | None = None
_lock = threading.Lock()


def watch_for_ray_gone() -> None:
    """Start the watch unless it runs (a loop just became busy)."""
    global _watch
    with _lock:
        if _watch is None or not _watch.is_alive():
            _watch = threading.Thread(target=_run, name="ray_ft-ray-watch", daemon=True)
            _watch.start()


def _run() -> None:
    """Every _CHECK_S while some loop is busy; ends when none is."""
    global _watch
    while True:
        time.sleep(_CHECK_S)
        busy = list(BUSY)
        if not busy:
            with _lock:
                if not BUSY:  # a loop busy after this starts a new watch
                    _watch = None
                    return
            continue
        for loop in busy:
            if not loop.ray_up():
                loop.ray_gone()
