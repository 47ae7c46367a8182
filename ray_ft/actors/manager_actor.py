"""The detached manager actor: shared fault-tolerance state and the node probe loop.

One per cluster (name + namespace). It wraps a FaultToleranceManager, writes its state to
``state_dir/<ray session>/manager_state.json`` after every change and reloads it when Ray
restarts the actor, so breakers and failure history survive the actor's own death while a
new cluster starts clean. A background thread keeps one HealthProbe on every alive node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray

from ray_ft.actors.health_probe import start_probe
from ray_ft.config import FTConfig
from ray_ft.failures import FailureEvent
from ray_ft.manager import FaultToleranceManager, WorkerStatus
from ray_ft.metrics import get_metrics

__all__ = ["DEFAULT_NAME", "DEFAULT_NAMESPACE", "ManagerActor", "get_manager", "shutdown_manager"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "ray_ft_manager"
DEFAULT_NAMESPACE = "ray_ft"
DEFAULT_STATE_DIR = os.path.join("checkpoints", "_manager")
_PROBE_STARTUP_GRACE_S = 60.0  # a new probe process may take a while to start


class ManagerActor:
    """The actor class; use :func:`get_manager` rather than instantiating it."""

    def __init__(self, config: dict[str, Any], state_dir: str) -> None:
        self._lock = threading.RLock()
        self.config = FTConfig.from_json_dict(config)
        self.manager = FaultToleranceManager(self.config)
        session = ray.get_runtime_context().get_session_name()
        self.state_path = Path(state_dir) / session / "manager_state.json"
        self.restored = self._load_state()
        self.started_at = time.time()
        self._probes: dict[str, Any] = {}
        self._probe_started: dict[str, float] = {}
        self._probe_answered: set[str] = set()
        self._pending: dict[str, Any] = {}
        self._misses: Counter[str] = Counter()
        self._last_report: dict[str, dict[str, Any]] = {}
        self._checkpoints: dict[str, list[Any]] = {}
        self._rounds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._probe_loop, name="ray_ft-probes", daemon=True)
        self._thread.start()

    # -- called by executors -------------------------------------------------------------

    def report_failures(self, events: list[FailureEvent]) -> None:
        """Take a batch of attempt failures (node faults count toward that node's breaker)."""
        with self._lock:
            for event in events:
                self.manager.report_failure(event)
            self._save_state()

    def excluded_nodes(self) -> dict[str, Any]:
        """What executors must respect: excluded nodes, and HALF_OPEN nodes with trials left."""
        with self._lock:
            workers = self.manager.workers
            return {
                "excluded": sorted(self.manager.excluded_workers()),
                "failed": sorted(w for w, i in workers.items() if i.status == WorkerStatus.FAILED),
                "dead": sorted(w for w, i in workers.items() if i.status == WorkerStatus.DEAD),
                "half_open": self.manager.half_open_workers(),
            }

    def acquire_trial(self, node_id: str) -> bool:
        """Take one trial slot of a HALF_OPEN node; False when none is left."""
        with self._lock:
            return self.manager.acquire_trial(node_id)

    def report_trial(
        self, node_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """The outcome of a trial task: success closes the breaker, failure reopens it."""
        with self._lock:
            self.manager.record_trial(node_id, success, failure)
            self._save_state()

    # -- operations ----------------------------------------------------------------------

    def open_breaker(self, node_id: str) -> None:
        """Trip a node's breaker by hand (an operator drill, or a test)."""
        with self._lock:
            self.manager.breaker(node_id).open()
            self._save_state()

    def close_breaker(self, node_id: str) -> None:
        """Close a node's breaker by hand."""
        with self._lock:
            self.manager.breaker(node_id).close()
            self._save_state()

    def update_config(self, config: dict[str, Any]) -> None:
        """Adopt new settings (a driver passed a config to get_manager for a running actor)."""
        new = FTConfig.from_json_dict(config)
        with self._lock:
            if new == self.config:
                return
            state = self.manager.get_state()
            self.config = new
            self.manager = FaultToleranceManager(new)
            self.manager.load_state(state)
            for breaker in self.manager.breakers.values():
                breaker.timeout = new.breaker_timeout
                breaker.half_open_max_calls = new.half_open_max_calls
            self._save_state()
        self._wake.set()

    def probe_now(self) -> dict[str, Any]:
        """Run one probe round at once and return the status (for the CLI and tests)."""
        self._probe_round()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Every node with status, breaker, health reasons, probe misses, recent failures."""
        with self._lock:
            m = self.manager
            nodes = {}
            for node_id, info in sorted(m.workers.items()):
                report = self._last_report.get(node_id, {})
                recent = [e.to_dict() for e in m.history if e.worker_id == node_id][-5:]
                nodes[node_id] = {
                    "status": info.status,
                    "capacity": info.capacity,
                    "breaker": m.breaker(node_id).state.value,
                    "health_reasons": m.health_reasons.get(node_id, []),
                    "healthy": report.get("healthy"),
                    "probe_misses": self._misses.get(node_id, 0),
                    "last_probe_at": report.get("time"),
                    "has_probe": node_id in self._probes,
                    "recent_failures": recent,
                }
            return {
                "nodes": nodes,
                "failure_counts": dict(m.failure_counts),
                "failures_total": sum(m.failure_counts.values()),
                "breaker_transitions": list(m.breaker_transitions[-50:]),
                "excluded": sorted(m.excluded_workers()),
                "config": self.config.to_dict(),
                "restored": self.restored,
                "state_path": str(self.state_path),
                "probe_rounds": self._rounds,
                "started_at": self.started_at,
                "checkpoints": {k: len(v) for k, v in self._checkpoints.items()},
            }

    def get_state(self) -> dict[str, Any]:
        """The wrapped manager's JSON state."""
        with self._lock:
            return self.manager.get_state()

    def probe_handles(self) -> dict[str, Any]:
        """Node id -> probe actor handle (tests check one per node)."""
        with self._lock:
            return dict(self._probes)

    # -- checkpoints kept in the object store (ObjectStoreCheckpointStore) ---------------

    def put_checkpoint(self, key: str, step: int, refs: list[Any], meta: dict[str, Any]) -> None:
        """Own a checkpoint object: ``refs[0]`` is the ref, the actor keeps it alive."""
        value = ray.get(refs[0])
        ref = ray.put(value)  # re-put so the actor, not the driver, owns it
        with self._lock:
            entries = [e for e in self._checkpoints.get(key, []) if e[0] != step]
            entries.append((step, ref, meta))
            entries.sort(key=lambda e: e[0])
            self._checkpoints[key] = entries

    def list_checkpoints(self, key: str) -> list[tuple[int, dict[str, Any]]]:
        """Steps and metadata of the checkpoints under ``key``."""
        with self._lock:
            return [(step, meta) for step, _, meta in self._checkpoints.get(key, [])]

    def get_checkpoint(self, key: str, step: int) -> list[Any]:
        """``[ref]`` of one checkpoint (wrapped in a list so the caller gets the ref itself)."""
        with self._lock:
            for s, ref, _ in self._checkpoints.get(key, []):
                if s == step:
                    return [ref]
        msg = f"no checkpoint at step {step} under {key!r}"
        raise KeyError(msg)

    def delete_checkpoint(self, key: str, step: int) -> None:
        """Drop one checkpoint (its object is freed when no one else holds it)."""
        with self._lock:
            self._checkpoints[key] = [e for e in self._checkpoints.get(key, []) if e[0] != step]

    def shutdown(self) -> None:
        """Stop the probe loop, kill the probes and exit without restart."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.config.probe_timeout + 5)
        with self._lock:
            for probe in self._probes.values():
                ray.kill(probe)
            self._probes.clear()
        ray.actor.exit_actor()

    # -- the probe loop ------------------------------------------------------------------

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._probe_round()
            except Exception:  # the loop must outlive any one bad round
                log.exception("probe round failed")
            self._wake.wait(self.config.health_check_interval)
            self._wake.clear()

    def _probe_round(self) -> None:
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        thresholds = {
            "cpu": self.config.cpu_threshold,
            "memory": self.config.memory_threshold,
            "disk": self.config.disk_threshold,
            "gpu_temp": self.config.gpu_temp_threshold,
            "gpu_memory": self.config.gpu_memory_threshold,
        }
        with self._lock:
            for node_id, node in alive.items():
                info = self.manager.workers.get(node_id)
                if info is None or info.status == WorkerStatus.DEAD:
                    self.manager.register_worker(node_id, int(node["Resources"].get("CPU", 0)))
                if node_id not in self._probes:
                    self._probes[node_id] = start_probe(node_id, thresholds)
                    self._probe_started.setdefault(node_id, time.monotonic())
            for node_id in list(self._probes):
                if node_id not in alive:
                    self._drop_probe(node_id)
                    self._forget_node(node_id)
            for node_id, info in self.manager.workers.items():
                if node_id not in alive and info.status != WorkerStatus.DEAD:
                    self.manager.mark_worker_dead(node_id)
            for node_id, probe in self._probes.items():
                if node_id not in self._pending:
                    self._pending[node_id] = probe.check.remote()
            pending = dict(self._pending)
        refs = list(pending.values())
        ready, _ = ray.wait(
            refs, num_returns=len(refs), timeout=self.config.probe_timeout, fetch_local=True
        )
        ready_set = set(ready)
        now = time.monotonic()
        with self._lock:
            for node_id, ref in pending.items():
                if ref in ready_set:
                    self._pending.pop(node_id, None)
                    self._take_answer(node_id, ref)
                else:
                    self._count_miss(node_id, now)
            self._rounds += 1
            self._save_state()
            self._export_metrics()

    def _export_metrics(self) -> None:
        metrics = get_metrics()
        for node_id, info in self.manager.workers.items():
            if info.status == WorkerStatus.DEAD:
                continue
            healthy = self._last_report.get(node_id, {}).get("healthy")
            metrics.node(node_id, self.manager.breaker(node_id).state.value, healthy)

    def _take_answer(self, node_id: str, ref: Any) -> None:
        try:
            answer = ray.get(ref)
        except Exception as exc:  # the probe died (or its node did): a miss; replace it
            log.warning("probe on node %s failed: %s", node_id, str(exc).splitlines()[0])
            self._drop_probe(node_id)
            self._count_miss(node_id, time.monotonic())
            return
        self._probe_answered.add(node_id)
        self._misses.pop(node_id, None)
        self._last_report[node_id] = {
            k: answer[k] for k in ("healthy", "reasons", "time", "health")
        }
        if answer["healthy"]:
            self.manager.mark_worker_healthy(node_id)
        else:
            self.manager.mark_worker_failed(node_id, answer["reasons"])

    def _count_miss(self, node_id: str, now: float) -> None:
        # Grace only for a node whose first probe has never answered (the probe process is
        # still starting); a replacement probe on a node that answered before gets none.
        starting = now - self._probe_started.get(node_id, now) < _PROBE_STARTUP_GRACE_S
        if node_id not in self._probe_answered and starting:
            return
        self._misses[node_id] += 1
        misses = self._misses[node_id]
        if misses >= self.config.probe_failure_threshold:
            info = self.manager.workers.get(node_id)
            if info is None or info.status == WorkerStatus.ALIVE:
                log.warning("node %s missed %d probes: marking it failed", node_id, misses)
            timeout = self.config.probe_timeout
            reason = f"missed {misses} consecutive health probes (timeout {timeout}s)"
            self.manager.mark_worker_failed(node_id, [reason])

    def _forget_node(self, node_id: str) -> None:
        """A node Ray reports gone: its probe history starts afresh if it ever rejoins."""
        self._probe_answered.discard(node_id)
        self._probe_started.pop(node_id, None)
        self._misses.pop(node_id, None)

    def _drop_probe(self, node_id: str) -> None:
        probe = self._probes.pop(node_id, None)
        self._pending.pop(node_id, None)
        if probe is not None:
            try:
                ray.kill(probe)
            except Exception:
                log.debug("could not kill probe on %s", node_id, exc_info=True)

    # -- persistence ---------------------------------------------------------------------

    def _save_state(self) -> None:
        state = self.manager.get_state()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def _load_state(self) -> bool:
        try:
            with open(self.state_path) as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable manager state %s: %s", self.state_path, exc)
            return False
        self.manager.load_state(state)
        return True


_RemoteManager: Any = ray.remote(ManagerActor)


def get_manager(
    config: FTConfig | dict[str, Any] | None = None,
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    state_dir: str | None = None,
) -> Any:
    """The cluster's one detached manager actor, created on first call.

    A ``config`` given for an actor that already runs is applied to it. ``state_dir``
    (default ``./checkpoints/_manager`` on the head node) is where state is persisted.
    """
    if not ray.is_initialized():
        ray.init()
    cfg = FTConfig.coerce(config)
    # The actor never decides retries: leave out exception classes it may not import.
    actor_config = {**cfg.to_dict(), "retry_exceptions": []}
    directory = os.path.abspath(state_dir or DEFAULT_STATE_DIR)
    handle = _RemoteManager.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        resources={"node:__internal_head__": 0.001},
    ).remote(actor_config, directory)
    if config is not None:
        ray.get(handle.update_config.remote(actor_config))
    return handle


def shutdown_manager(handle: Any = None, *, timeout: float = 30.0) -> None:
    """Stop the manager actor (its probes too) for good; no error when it is already gone."""
    if handle is None:
        try:
            handle = ray.get_actor(DEFAULT_NAME, namespace=DEFAULT_NAMESPACE)
        except ValueError:
            return
    with contextlib.suppress(ray.exceptions.RayActorError):  # the expected answer: it exited
        ray.get(handle.shutdown.remote(), timeout=timeout)
