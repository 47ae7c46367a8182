"""Executors' loops with work in flight, and the one thread that watches Ray under them.

A loop with work in flight is held in ``BUSY`` so that a dropped executor finishes its work
(the loop's thread holds only a weak reference); it is released when the loop goes idle.
While any loop is busy, one daemon thread looks every half second whether the user shut Ray
down (``ray.shutdown()``): a loop's thread caught in ``ray.wait`` then may never come back
(Ray's core worker is gone under it), so the watch ends that loop's calls instead.

No thread of ray_ft may be the one that frees a loop while Ray shuts down: the loop's
ObjectRefs go with it, and an ObjectRef freed while Ray's core worker is being destroyed
ends the whole process (exit status 1, on every Ray from 2.44 to 2.60). So the watch
touches no loop while Ray is up and holds none between its looks, and a loop whose Ray was
shut down under it is kept in ``RAY_GONE`` for the life of the process (a few objects).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

__all__ = ["BUSY", "RAY_GONE", "watch_for_ray_gone"]

BUSY: set[Any] = set()  # Loops; changed under each loop's own lock
RAY_GONE: list[Any] = []  # Loops that Ray was shut down under: never freed (see above)
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
        with _lock:
            if not BUSY:  # a loop busy after this starts a new watch
                _watch = None
                return
        if not ray.is_initialized():  # loops are looked at only then (see the docstring)
            _end_calls_of_gone()


def _end_calls_of_gone() -> None:
    """Each busy loop whose Ray is gone ends its calls (``Loop.ray_gone`` keeps the loop in
    RAY_GONE, so that this thread's reference is never the last)."""
    for loop in list(BUSY):
        if not loop.ray_up():  # a loop's own test of Ray (pure tests inject one)
            loop.ray_gone()
