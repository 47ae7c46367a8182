"""Fault injection: kill workers, kill, freeze or slow nodes, and a bounded ChaosMonkey.

Each action runs through a small agent actor pinned to the target node, which signals
that node's own processes, so drills work on a real multi-machine cluster, not only on
local PIDs. Killing or freezing a whole node is done by a detached helper process the
agent starts (it must outlive, or not be frozen with, the node's raylet). Every action is
logged and returned as a ChaosEvent. For tests, the demo and users' own drills.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft._errors import invalid
from ray_ft.nodes import alive_nodes

__all__ = [
    "ChaosEvent",
    "ChaosMonkey",
    "freeze_node",
    "kill_node",
    "kill_random_worker",
    "slow_node",
]

log = logging.getLogger(__name__)

ACTIONS = ("kill_worker", "freeze_node", "kill_node")
# Processes of ray_ft itself and Ray's idle workers are never chosen as victims.
_SPARED = ("ray::IDLE", "ray::_ChaosAgent", "ray::HealthProbe", "ray::ManagerActor")


@dataclasses.dataclass(frozen=True, slots=True)
class ChaosEvent:
    """One injected fault: when, what, where, and which processes."""

    timestamp: float
    action: str
    node_id: str | None
    detail: str
    pids: tuple[int, ...] = ()


class _ChaosAgent:
    """Lives on one node; finds and signals that node's Ray processes."""

    def __init__(self) -> None:
        self.node_id = ray.get_runtime_context().get_node_id()

    def _raylet(self) -> psutil.Process:
        proc = psutil.Process(os.getpid())
        for parent in proc.parents():
            try:
                if "raylet" in parent.name() or any("raylet" in c for c in parent.cmdline()[:1]):
                    return parent
            except psutil.Error:
                continue
        return proc.parent() or proc

    def task_workers(self, name_part: str = "") -> list[int]:
        """PIDs of worker processes running a task whose name contains ``name_part``."""
        pids = []
        for child in self._raylet().children(recursive=True):
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if not title.startswith("ray::") or any(title.startswith(s) for s in _SPARED):
                continue
            if name_part in title and child.pid != os.getpid():
                pids.append(child.pid)
        return pids

    def kill_worker(self, name_part: str, seed: int | None) -> list[int]:
        """SIGKILL one random task worker; [] when none runs."""
        pids = self.task_workers(name_part)
        if not pids:
            return []
        victim = random.Random(seed).choice(sorted(pids))
        os.kill(victim, signal.SIGKILL)
        return [victim]

    def node_pids(self) -> list[int]:
        """The raylet and all its descendants (this agent included)."""
        raylet = self._raylet()
        return [raylet.pid] + [c.pid for c in raylet.children(recursive=True)]

    def slow_down(self, factor: float, seconds: float) -> int:
        """Start the detached duty-cycle helper on this node's task workers; its pid."""
        helper = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray_ft.tools.duty_cycle",
                str(self._raylet().pid),
                repr(float(factor)),
                repr(float(seconds)),
            ],
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert helper.stdout is not None
        if not helper.stdout.readline():  # it says so once the workers are being slowed
            _, err = helper.communicate(timeout=30)
            msg = f"the slow-node helper on {self.node_id} exited: {err.strip()[-500:]}"
            raise RuntimeError(msg)
        return helper.pid

    def signal_node(self, script: str, pids: list[int]) -> list[int]:
        """Run ``script`` with $PIDS set in a detached helper (it may kill this agent too)."""
        env = {**os.environ, "PIDS": " ".join(str(p) for p in pids)}
        subprocess.Popen(
            ["/bin/sh", "-c", script],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return pids


_RemoteAgent: Any = ray.remote(_ChaosAgent)
_agents: dict[str, Any] = {}
_agents_lock = threading.Lock()


def _agent(node_id: str) -> Any:
    with _agents_lock:
        handle = _agents.get(node_id)
        if handle is None:
            handle = _RemoteAgent.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                num_cpus=0,
                max_restarts=0,
            ).remote()
            _agents[node_id] = handle
        return handle


def _forget_agent(node_id: str) -> None:
    with _agents_lock:
        _agents.pop(node_id, None)


def _alive_nodes() -> list[str]:
    return sorted(alive_nodes())


def _head_node() -> str | None:
    for node_id, node in alive_nodes().items():
        if "node:__internal_head__" in node.get("Resources", {}):
            return node_id
    return None


def _record(event: ChaosEvent) -> ChaosEvent:
    log.warning("chaos: %s on %s: %s", event.action, event.node_id, event.detail)
    return event


def kill_random_worker(
    *, name_part: str = "", node_id: str | None = None, seed: int | None = None
) -> ChaosEvent:
    """SIGKILL one worker process running a task (matching ``name_part``) on some node."""
    rng = random.Random(seed)
    nodes = [node_id] if node_id else _alive_nodes()
    rng.shuffle(nodes)
    for candidate in nodes:
        try:
            pids = ray.get(
                _agent(candidate).kill_worker.remote(name_part, rng.randrange(2**31)), timeout=30
            )
        except Exception as exc:
            _forget_agent(candidate)
            log.debug("chaos agent on %s unavailable: %s", candidate, exc)
            continue
        if pids:
            return _record(
                ChaosEvent(
                    time.time(),
                    "kill_worker",
                    candidate,
                    f"SIGKILL worker pid {pids[0]}",
                    tuple(pids),
                )
            )
    return _record(ChaosEvent(time.time(), "kill_worker", None, "no task worker was running"))


def kill_node(node_id: str, *, allow_head: bool = False) -> ChaosEvent:
    """SIGKILL a node's raylet and every process under it (the node dies)."""
    _refuse_head(node_id, allow_head, "kill")
    agent = _agent(node_id)
    pids = ray.get(agent.node_pids.remote(), timeout=30)
    agent.signal_node.remote("kill -9 $PIDS", pids)  # no answer: the agent dies with the node
    _forget_agent(node_id)
    return _record(
        ChaosEvent(
            time.time(),
            "kill_node",
            node_id,
            f"SIGKILL raylet and {len(pids) - 1} processes",
            tuple(pids),
        )
    )


def freeze_node(node_id: str, seconds: float, *, allow_head: bool = False) -> ChaosEvent:
    """SIGSTOP a node's raylet and its processes for ``seconds``, then SIGCONT them.

    Keep ``seconds`` under Ray's own node timeout (about 13 s by default) unless the
    point is to have Ray declare the node dead.
    """
    _refuse_head(node_id, allow_head, "freeze")
    if not 0 < seconds <= 3600:
        raise invalid("seconds", seconds, "a duration in (0, 3600]")
    script = f"kill -STOP $PIDS; sleep {float(seconds)}; kill -CONT $PIDS"
    agent = _agent(node_id)
    pids = ray.get(agent.node_pids.remote(), timeout=30)
    agent.signal_node.remote(script, pids)  # not awaited: the agent itself is frozen too
    return _record(
        ChaosEvent(
            time.time(),
            "freeze_node",
            node_id,
            f"SIGSTOP {len(pids)} processes for {seconds:g}s",
            tuple(pids),
        )
    )


def slow_node(node_id: str, factor: float, duration: float) -> ChaosEvent:
    """Make a node's task workers ``factor`` times slower for ``duration`` seconds.

    A helper on that node stops and continues its worker processes (SIGSTOP/SIGCONT) so
    they run ``1/factor`` of the time: a throttled or contended node that stays alive and
    keeps answering its probes (ray_ft's own actors are spared). Bounded: the helper ends
    after ``duration`` and continues every process it stopped. The head node is allowed.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor <= 100:
        raise invalid("factor", factor, "how many times slower, in (1, 100]")
    number = not isinstance(duration, bool) and isinstance(duration, (int, float))
    if not number or not 0 < duration <= 3600:
        raise invalid("duration", duration, "seconds in (0, 3600]")
    helper = ray.get(_agent(node_id).slow_down.remote(factor, duration), timeout=30)
    return _record(
        ChaosEvent(
            time.time(),
            "slow_node",
            node_id,
            f"workers run 1/{factor:g} of the time for {duration:g}s (helper pid {helper})",
            (helper,),
        )
    )


def _refuse_head(node_id: str, allow_head: bool, verb: str) -> None:
    if not allow_head and node_id == _head_node():
        msg = (
            f"refusing to {verb} the head node {node_id}: it holds the GCS and the ray_ft "
            "manager; pass allow_head=True if that is the point"
        )
        raise ValueError(msg)


class ChaosMonkey:
    """Injects random faults every ``interval_s`` seconds; bounded, stops by itself.

    ``actions`` are drawn from "kill_worker", "freeze_node", "kill_node". At most
    ``max_events`` faults and ``max_duration_s`` seconds; the head node is never frozen
    or killed, and the last ``min_nodes`` nodes are never killed.
    """

    def __init__(
        self,
        interval_s: float = 2.0,
        actions: Sequence[str] = ("kill_worker",),
        seed: int = 0,
        max_events: int = 10,
        *,
        max_duration_s: float = 600.0,
        name_part: str = "",
        freeze_s: float = 5.0,
        min_nodes: int = 1,
    ) -> None:
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown or not actions:
            raise invalid("actions", list(actions), f"some of {', '.join(ACTIONS)}")
        if interval_s <= 0 or max_events < 1:
            msg = "interval_s must be > 0 and max_events >= 1"
            raise ValueError(msg)
        self.interval_s = interval_s
        self.actions = tuple(actions)
        self.max_events = max_events
        self.max_duration_s = max_duration_s
        self.name_part = name_part
        self.freeze_s = freeze_s
        self.min_nodes = min_nodes
        self.events: list[ChaosEvent] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChaosMonkey:
        """Begin injecting in a background thread."""
        self._thread = threading.Thread(target=self._run, name="ray_ft-chaos", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[ChaosEvent]:
        """Stop and return every event injected."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return list(self.events)

    def __enter__(self) -> ChaosMonkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step(self) -> ChaosEvent | None:
        """Inject one fault now (what the thread does every interval)."""
        action = self._rng.choice(self.actions)
        head = _head_node()
        others = [n for n in _alive_nodes() if n != head]
        if action == "kill_worker":
            event = kill_random_worker(name_part=self.name_part, seed=self._rng.randrange(2**31))
        elif not others:
            return None
        elif action == "freeze_node":
            event = freeze_node(self._rng.choice(others), self.freeze_s)
        else:
            if len(others) + 1 <= self.min_nodes:
                return None
            event = kill_node(self._rng.choice(others))
        self.events.append(event)
        return event

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_duration_s
        while len(self.events) < self.max_events and time.monotonic() < deadline:
            if self._stop.wait(self.interval_s):
                return
            try:
                self.step()
            except Exception:
                log.exception("chaos step failed")
