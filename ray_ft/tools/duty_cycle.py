"""The slow-node drill's helper process: duty-cycles a node's task workers with
SIGSTOP/SIGCONT so they run ``1/factor`` of the time (``python -m ray_ft.tools.duty_cycle``).

Started detached by ``ray_ft.tools.chaos.slow_node`` on the target node; it finds the workers
under that node's raylet every half second (new workers are slowed too), spares ray_ft's
own actors (the node keeps answering its probes: slow, not dead), and always ends by
continuing every process it stopped (SIGTERM ends it early, the same way).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psutil

__all__ = ["SPARED", "duty_cycle", "main"]

#: ray_ft's own actors, never slowed: a slow node still answers its probes
SPARED = ("ray::_ChaosAgent", "ray::HealthProbe", "ray::ManagerActor")
_PERIOD_S = 0.1
_RESCAN_S = 0.5


def _workers(raylet: psutil.Process) -> set[int]:
    pids = set()
    for child in raylet.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(child.cmdline())
            if title.startswith("ray::") and not title.startswith(SPARED):
                pids.add(child.pid)
    return pids


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def duty_cycle(raylet_pid: int, factor: float, seconds: float) -> None:
    """Let the raylet's task workers run ``1/factor`` of every 0.1 s for ``seconds``."""
    raylet = psutil.Process(raylet_pid)
    signal.signal(signal.SIGTERM, _end_early)  # a drill stopped early still continues all
    running = _PERIOD_S / factor
    end = time.monotonic() + seconds
    stopped: set[int] = set()
    scanned = -float("inf")
    pids: set[int] = set()
    try:
        while time.monotonic() < end and raylet.is_running():
            if time.monotonic() - scanned >= _RESCAN_S:
                pids, scanned = _workers(raylet), time.monotonic()
            _signal(stopped, signal.SIGCONT)
            time.sleep(running)
            _signal(pids, signal.SIGSTOP)
            if not stopped:
                print("slowing", len(pids), flush=True)  # the drill is on: tell the agent
            stopped |= pids
            time.sleep(_PERIOD_S - running)
    finally:
        _signal(stopped, signal.SIGCONT)


def _end_early(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """``python -m ray_ft.tools.duty_cycle RAYLET_PID FACTOR SECONDS``."""
    raylet_pid, factor, seconds = (argv if argv is not None else sys.argv[1:])[:3]
    duty_cycle(int(raylet_pid), float(factor), float(seconds))


if __name__ == "__main__":
    main()
