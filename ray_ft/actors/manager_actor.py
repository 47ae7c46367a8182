"""The detached manager actor: shared fault-tolerance state, liveness and health probes.

One per cluster (name + namespace). It wraps a FaultToleranceManager, writes its state to
``state_dir/<ray session>/manager_state.json`` after every change and reloads it when Ray
restarts the actor, so breakers and failure history survive the actor's own death while a
new cluster starts clean. Two background threads keep one HealthProbe on every alive node:
the liveness thread pings each probe every ``liveness_interval`` and judges the answers with
a phi-accrual detector per node (their round trip is the node's latency); the health thread
asks each probe for a psutil/NVML verdict every ``health_check_interval``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

from ray_ft.actors._checkpoint_keeper import CheckpointKeeper
from ray_ft.actors._elastic import ElasticWatch
from ray_ft.actors.health_probe import start_probe
from ray_ft.config import CLUSTER_KEYS, FTConfig
from ray_ft.failures import FailureEvent
from ray_ft.manager.liveness import LivenessBook, PhiAccrualDetector
from ray_ft.manager.state import FaultToleranceManager, WorkerStatus
from ray_ft.metrics import get_metrics
from ray_ft.nodes import alive_nodes

__all__ = ["DEFAULT_NAME", "DEFAULT_NAMESPACE", "ManagerActor", "get_manager", "shutdown_manager"]

log = logging.getLogger(__name__)

DEFAULT_NAME = "ray_ft_manager"
DEFAULT_NAMESPACE = "ray_ft"
DEFAULT_STATE_DIR = os.path.join("checkpoints", "_manager")
_PROBE_STARTUP_GRACE_S = 30.0  # a new probe process may take a while to start
_JUDGE_EVERY_S = 0.2  # how often silences are judged between heartbeats
_SWEEP_S = 0.02  # after the first answer of a burst, the others get this long to land
_WRITE_EVERY_S = 1.0  # the state file is written at most this often (coalesced)
_TOMBSTONE_S = 120.0  # a node Ray reports gone is forgotten after this long
_OBSERVER_STALL_FACTOR = 3.0  # a liveness round this many intervals late: the actor stalled


class ManagerActor:
    """The actor class; use :func:`get_manager` rather than instantiating it."""

    def __init__(self, config: dict[str, Any], state_dir: str) -> None:
        self._lock = threading.RLock()
        self._health_lock = threading.Lock()
        self.config = FTConfig.from_json_dict(config)
        self.manager = FaultToleranceManager(self.config)
        session = ray.get_runtime_context().get_session_name()
        self.state_path = Path(state_dir) / session / "manager_state.json"
        self.restored = self._load_state()
        self.started_at = time.time()
        self._probes: dict[str, Any] = {}
        self._probe_started: dict[str, float] = {}
        self._book = LivenessBook(self._new_detector)
        self._pings: dict[str, tuple[Any, float]] = {}
        self._ping_nodes: dict[Any, str] = {}  # ping ref -> node
        self._never_answered: set[str] = set()  # probes started, no heartbeat yet
        self._metrics_at = 0.0
        self._latency: dict[str, float] = {}
        self._health_pending: dict[str, Any] = {}
        self._misses: Counter[str] = Counter()
        self._last_report: dict[str, dict[str, Any]] = {}
        self._checkpoints = CheckpointKeeper(self.state_path.parent / "checkpoints")
        self._rounds = 0
        self._liveness_rounds = 0
        self._refused = 0  # reports and trial requests for nodes Ray never reported
        self._synced_at = -float("inf")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._dirty = threading.Event()
        self._state_version = self._written_version = 0
        self.elastic = ElasticWatch(restarted=self.restored)
        self._threads = [
            threading.Thread(
                target=self.elastic.run, args=(self._stop,), name="ray_ft-elastic", daemon=True
            ),
            threading.Thread(target=self._liveness_loop, name="ray_ft-liveness", daemon=True),
            threading.Thread(target=self._health_loop, name="ray_ft-health", daemon=True),
            threading.Thread(target=self._writer_loop, name="ray_ft-state", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- called by executors -------------------------------------------------------------

    def report_failures(self, events: list[FailureEvent]) -> None:
        """Take a batch of attempt failures (only node-blamed ones count toward breakers).

        An event naming a node Ray has never reported is refused: no state is made for it.
        """
        with self._lock:
            for event in events:
                if event.worker_id is not None and not self._known(event.worker_id):
                    self._refused += 1
                    log.warning(
                        "ignoring a failure report for %r: Ray reports no such node",
                        event.worker_id,
                    )
                    continue
                self.manager.report_failure(event)
            self._save_state()

    def excluded_nodes(self, token: str | None = None) -> dict[str, Any] | None:
        """What executors must respect: excluded, failed, dead, degraded and HALF_OPEN
        nodes; None when the caller's ``token`` is current (nothing changed: nothing sent),
        else only what changed since ``token`` (or the whole snapshot when it is too old)."""
        with self._lock:
            return self.manager.exclusions_since(token)

    def elastic_view(
        self, driver: str, demand: dict[Any, int], token: int | None = None
    ) -> dict[str, Any] | None:
        """Take a driver's demand (what it would run at once, per request; empty: none) and
        answer node types and draining deadlines (None when ``token`` is current)."""
        return self.elastic.report(driver, demand, token)

    def acquire_trial(self, node_id: str) -> bool:
        """Take one trial slot of a HALF_OPEN node; False when none is left."""
        with self._lock:
            return self._known(node_id) and self.manager.acquire_trial(node_id)

    def report_trial(
        self, node_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """The outcome of a trial task: success closes the breaker, failure reopens it."""
        with self._lock:
            if not self._known(node_id):
                return
            self.manager.record_trial(node_id, success, failure)
            self._save_state()

    def _known(self, node_id: str) -> bool:
        """A node Ray has reported (alive or dead). A node newer than the last look at
        Ray's table gets one more look, at most once a second."""
        if node_id in self.manager.workers:
            return True
        if time.monotonic() - self._synced_at >= 1.0:
            self._sync_nodes()
        return node_id in self.manager.workers

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

    def cluster_config(self) -> dict[str, Any]:
        """The cluster-wide settings in force (see ``ray_ft.config.CLUSTER_KEYS``)."""
        return self.config.cluster_settings()

    def update_config(self, config: dict[str, Any]) -> None:
        """Adopt new settings explicitly (an operator's decision; drivers never call it)."""
        new = FTConfig.from_json_dict(config)
        with self._lock:
            if new == self.config:
                return
            state = self.manager.get_state()
            self.config = new
            self.manager = FaultToleranceManager(new)
            self.manager.load_state(state)
            for breaker in self.manager.circuit_breakers.values():
                breaker.timeout = new.breaker_timeout
                breaker.half_open_max_calls = new.half_open_max_calls
            self._book = LivenessBook(self._new_detector)  # relearn with the new settings
            self._save_state()
        self._wake.set()

    def probe_now(self) -> dict[str, Any]:
        """Run one health round at once and return the status (for the CLI and tests)."""
        self._sync_nodes()
        self._health_round()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Every node: status, severity and reasons, breaker, latency, recent failures."""
        with self._lock:
            m = self.manager
            now = time.monotonic()
            nodes = {}
            for node_id, info in sorted(m.workers.items()):
                report = self._last_report.get(node_id, {})
                recent = [e.to_dict() for e in m.history if e.worker_id == node_id][-5:]
                detector = self._book.detectors.get(node_id)
                latency = self._latency.get(node_id)
                nodes[node_id] = {
                    "status": info.status,
                    "severity": _severity(m, node_id),
                    "reasons": m.node_reasons(node_id),
                    "capacity": info.capacity,
                    "breaker": m.breaker(node_id).state.value,
                    "health_reasons": m.health_reasons.get(node_id, []),
                    "healthy": report.get("healthy"),
                    "latency_ms": None if latency is None else round(latency * 1000, 2),
                    "heartbeat_silence_s": (
                        None if detector is None else round(detector.silence(now), 3)
                    ),
                    "phi": None if detector is None else round(min(detector.phi(now), 99.0), 2),
                    "probe_misses": self._misses.get(node_id, 0),
                    "last_probe_at": report.get("time"),
                    "has_probe": node_id in self._probes,
                    # a drain notice (spot preemption, scale-down): leaving is nobody's fault
                    "drain": self.elastic.drain_state(node_id),
                    "recent_failures": recent,
                }
            return {
                "nodes": nodes,
                "failure_counts": dict(m.failure_counts),
                "failures_total": sum(m.failure_counts.values()),
                "breaker_transitions": list(m.breaker_transitions[-50:]),
                # a node that left (scaled down, drained, dead) is listed as such, not excluded
                "excluded": sorted(
                    w
                    for w in m.excluded_workers()
                    if getattr(m.workers.get(w), "status", None) != WorkerStatus.DEAD
                ),
                "elastic": self.elastic.status(),
                "config": self.config.to_dict(),
                "restored": self.restored,
                "state_path": str(self.state_path),
                "probe_rounds": self._rounds,
                "liveness_rounds": self._liveness_rounds,
                "started_at": self.started_at,
                "checkpoints": self._checkpoints.counts(),
                "refused_reports": self._refused,
                "state_version": self._state_version,
                "state_written_version": self._written_version,
                "observer_suspect": m.observer_suspect,
                "degraded": sorted(m.degraded),
                "mass_degraded": m.mass_degraded,
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
    # on their own thread (concurrency group): a large state never delays executors' polls

    @ray.method(concurrency_group="checkpoints")
    def put_checkpoint(self, run_id: str, step: int, refs: list[Any], meta: dict[str, Any]) -> None:
        """Own a checkpoint object (``refs[0]``) and keep it on disk too, then answer."""
        self._checkpoints.put(run_id, step, refs[0], meta)

    @ray.method(concurrency_group="checkpoints")
    def list_checkpoints(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Steps and metadata of one run's checkpoints."""
        return self._checkpoints.steps(run_id)

    @ray.method(concurrency_group="checkpoints")
    def list_checkpoint_runs(self) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """Every run's checkpoint steps and metadata."""
        return self._checkpoints.runs()

    @ray.method(concurrency_group="checkpoints")
    def get_checkpoint(self, run_id: str, step: int) -> list[Any]:
        """``[ref]`` of one checkpoint (wrapped in a list so the caller gets the ref itself)."""
        return [self._checkpoints.get(run_id, step)]

    @ray.method(concurrency_group="checkpoints")
    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Drop one checkpoint (its object is freed when no one else holds it)."""
        self._checkpoints.delete(run_id, step)

    def shutdown(self) -> None:
        """Stop the probe threads, kill the probes and exit without restart."""
        self._stop.set()
        self._wake.set()
        self._dirty.set()  # the writer flushes what is pending, then ends
        for thread in self._threads:
            thread.join(timeout=self.config.probe_timeout + 5)
        with self._lock:
            for probe in self._probes.values():
                ray.kill(probe)
            self._probes.clear()
        ray.actor.exit_actor()

    # -- nodes and probes ----------------------------------------------------------------

    def _sync_nodes(self) -> None:
        """Follow Ray's node table: register new nodes, start probes, drop dead ones."""
        self._synced_at = time.monotonic()
        alive = alive_nodes()
        thresholds = {
            "cpu": self.config.cpu_threshold,
            "memory": self.config.memory_threshold,
            "disk": self.config.disk_threshold,
            "gpu_temp": self.config.gpu_temp_threshold,
            "gpu_memory": self.config.gpu_memory_threshold,
        }
        changed = False
        with self._lock:
            for node_id, node in alive.items():
                info = self.manager.workers.get(node_id)
                capacity = int(node["Resources"].get("CPU", 0))
                if info is None or info.status == WorkerStatus.DEAD or info.capacity != capacity:
                    self.manager.register_worker(node_id, capacity)
                    changed = True
                if not self.elastic.keeps_probe(node_id, node["Resources"]):
                    if node_id in self._probes:  # an idle autoscaled node: let it go
                        self._drop_probe(node_id)
                        self._forget_node(node_id)
                    continue
                if node_id not in self._probes:
                    gpus = int(node["Resources"].get("GPU", 0))
                    self._probes[node_id] = start_probe(node_id, thresholds, gpus)
                    self._probe_started.setdefault(node_id, time.monotonic())
                    if node_id not in self._book.detectors:
                        self._never_answered.add(node_id)
            for node_id in list(self._probes):
                if node_id not in alive:
                    self._drop_probe(node_id)
                    self._forget_node(node_id)
            for node_id, info in self.manager.workers.items():
                if node_id not in alive and info.status != WorkerStatus.DEAD:
                    self.manager.mark_worker_dead(node_id)
                    changed = True
            # a node gone this long is forgotten: every table holds the live cluster
            changed = bool(self.manager.prune_departed(_TOMBSTONE_S)) or changed
            if changed:
                self._save_state()

    def _new_detector(self) -> PhiAccrualDetector:
        return PhiAccrualDetector(
            threshold=self.config.liveness_phi_threshold,
            timeout_floor=self.config.liveness_timeout_floor,
            expected_interval=self.config.liveness_interval,
        )

    # -- the liveness loop ---------------------------------------------------------------

    def _liveness_loop(self) -> None:
        last_round: float | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            interval = self.config.liveness_interval
            if last_round is not None and started - last_round > _OBSERVER_STALL_FACTOR * interval:
                # this actor itself stalled (its node is busy or was paused): the silence
                # is ours, not the nodes'
                with self._lock:
                    self._book.forgive(started - last_round - interval, started)
            last_round = started
            try:
                self._sync_nodes()
                with self._lock:
                    if self.manager.expire_trial_leases():
                        self._save_state()
                self._liveness_round(started + interval)
            except Exception:  # the loop must outlive any one bad round
                log.exception("liveness round failed")
                self._wake.wait(interval)
                self._wake.clear()

    def _liveness_round(self, deadline: float) -> None:
        """Ping every probe that has no ping out, collect answers until ``deadline``, judge.

        A wake-up waits for the first answer, then takes every answer that arrived within
        _SWEEP_S in one sweep: O(pings out) per wake-up, never per answer, and judging
        looks only at the nodes whose deadline passed (LivenessBook).
        """
        with self._lock:
            for node_id, probe in self._probes.items():
                if node_id not in self._pings:
                    ref = probe.ping.remote()
                    self._pings[node_id] = (ref, time.monotonic())
                    self._ping_nodes[ref] = node_id
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._lock:
                refs = list(self._ping_nodes)
            if not refs:
                self._wake.wait(remaining)
                self._wake.clear()
                break
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(remaining, _JUDGE_EVERY_S))
            if ready:  # let a burst of answers land, then take them all at once
                time.sleep(_SWEEP_S)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            arrived = time.monotonic()
            for ref in ready:
                with self._lock:
                    pinged = self._ping_nodes.pop(ref) if ref in self._ping_nodes else None
                if pinged is not None:
                    self._take_ping(pinged, ref, arrived)
            self._judge_liveness(arrived)
        self._liveness_rounds += 1

    def _take_ping(self, node_id: str, ref: Any, arrived: float) -> None:
        with self._lock:
            sent = self._pings.pop(node_id, (None, arrived))[1]
        try:
            ray.get(ref, timeout=0)
        except Exception as exc:  # the probe died: replace it; no heartbeat
            log.warning("probe on node %s failed: %s", node_id, str(exc).splitlines()[0])
            with self._lock:
                self._drop_probe(node_id)
            return
        with self._lock:
            self._never_answered.discard(node_id)
            back = self._book.heartbeat(node_id, arrived)
            if back or node_id in self.manager.liveness_failures:
                self.manager.update_liveness(node_id, True)
                self._save_state()
            rtt = arrived - sent
            previous = self._latency.get(node_id)
            self._latency[node_id] = rtt if previous is None else 0.8 * previous + 0.2 * rtt

    def _judge_liveness(self, now: float) -> None:
        """Verdicts for the nodes whose deadline passed (and probes that never answered):
        O(verdicts), not O(nodes)."""
        changed = False
        with self._lock:
            for node_id in self._book.judge(now):
                info = self.manager.workers.get(node_id)
                if info is None or info.status == WorkerStatus.DEAD:
                    continue
                if self.elastic.drain_state(node_id):
                    continue  # going on notice: its silence is the drain, not a fault
                detector = self._book.detectors[node_id]
                silence, phi = detector.silence(now), detector.phi(now)
                reason = (
                    f"stopped answering heartbeats ({silence:.1f}s silent, phi "
                    f"{min(phi, 99):.1f} > {detector.threshold:g})"
                )
                if self.manager.update_liveness(node_id, False, reason):
                    log.warning("node %s %s: marking it failed", node_id, reason)
                    changed = True
                else:  # held back (most nodes look failed: the observer is suspect)
                    self._book.recheck(node_id, now + _JUDGE_EVERY_S)
            for node_id in list(self._never_answered):
                waited = now - self._probe_started.get(node_id, now)
                if waited < _PROBE_STARTUP_GRACE_S or node_id in self.manager.liveness_failures:
                    continue
                if self.elastic.drain_state(node_id):
                    continue
                never = f"its health probe never answered ({waited:.0f}s)"
                changed = self.manager.update_liveness(node_id, False, never) or changed
            if changed:
                self._save_state()
            if now - self._metrics_at >= 1.0:  # a gauge per node: once a second is plenty
                self._metrics_at = now
                self._export_metrics()

    # -- the health loop -----------------------------------------------------------------

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._health_round()
            except Exception:  # the loop must outlive any one bad round
                log.exception("health round failed")
            self._wake.wait(self.config.health_check_interval)
            self._wake.clear()

    def _health_round(self) -> None:
        """Ask every probe for a health verdict; unanswered checks count as misses.

        Rounds never overlap (``probe_now`` and the thread share a lock), so one late
        check is one miss.
        """
        with self._health_lock:
            with self._lock:
                for node_id, probe in self._probes.items():
                    if node_id not in self._health_pending:
                        self._health_pending[node_id] = probe.check.remote()
                pending = dict(self._health_pending)
            refs = list(pending.values())
            ready, _ = ray.wait(
                refs, num_returns=len(refs), timeout=self.config.probe_timeout, fetch_local=True
            )
            ready_set = set(ready)
            with self._lock:
                for node_id, ref in pending.items():
                    if ref in ready_set:
                        self._health_pending.pop(node_id, None)
                        self._take_health(node_id, ref)
                    elif node_id in self._probes:
                        self._count_miss(node_id)
                self._rounds += 1
                self._save_state()

    def _take_health(self, node_id: str, ref: Any) -> None:
        try:
            answer = ray.get(ref)
        except Exception as exc:  # the probe died; the liveness loop replaces it
            log.warning("health check on node %s failed: %s", node_id, str(exc).splitlines()[0])
            return
        self._misses.pop(node_id, None)
        self._last_report[node_id] = {
            k: answer.get(k) for k in ("healthy", "severity", "reasons", "time", "health")
        }
        severity = answer.get("severity") or ("ok" if answer["healthy"] else "fatal")
        self.manager.update_health(node_id, severity, list(answer["reasons"]))

    def _count_miss(self, node_id: str) -> None:
        now = time.monotonic()
        starting = now - self._probe_started.get(node_id, now) < _PROBE_STARTUP_GRACE_S
        if node_id not in self._latency and starting:
            return  # its probe is still starting
        self._misses[node_id] += 1
        misses = self._misses[node_id]
        if misses >= self.config.probe_failure_threshold:
            reason = (
                f"missed {misses} consecutive health checks (timeout {self.config.probe_timeout}s)"
            )
            self.manager.update_health(node_id, "fatal", [reason])

    def _export_metrics(self) -> None:
        metrics = get_metrics()
        for node_id, info in self.manager.workers.items():
            if info.status == WorkerStatus.DEAD:
                continue
            metrics.node(node_id, self.manager.breaker(node_id).state.value, info.status == "alive")

    def _forget_node(self, node_id: str) -> None:
        """A node Ray reports gone: its probe history starts afresh if it ever rejoins."""
        self._probe_started.pop(node_id, None)
        self._book.forget([node_id])
        self._never_answered.discard(node_id)
        self._latency.pop(node_id, None)
        self._misses.pop(node_id, None)
        self._last_report.pop(node_id, None)
        self.manager.liveness_failures.pop(node_id, None)

    def _drop_probe(self, node_id: str) -> None:
        probe = self._probes.pop(node_id, None)
        ping = self._pings.pop(node_id, None)
        if ping is not None:
            self._ping_nodes.pop(ping[0], None)
        self._health_pending.pop(node_id, None)
        if probe is not None:
            try:
                ray.kill(probe)
            except Exception:
                log.debug("could not kill probe on %s", node_id, exc_info=True)

    # -- persistence ---------------------------------------------------------------------

    def _save_state(self) -> None:
        """Ask for the state to be written: at most once per _WRITE_EVERY_S, coalesced, by
        the writer thread and off the lock, so a storm of reports never waits on disk."""
        self._state_version += 1
        self._dirty.set()

    def _writer_loop(self) -> None:
        written_at = -float("inf")
        while True:
            self._dirty.wait()
            if self._stop.is_set() and self._written_version == self._state_version:
                return
            pause = written_at + _WRITE_EVERY_S - time.monotonic()
            if pause > 0 and not self._stop.is_set():
                self._stop.wait(pause)  # coalesce what comes in meanwhile
            self._dirty.clear()
            with self._lock:  # a consistent snapshot; the disk write happens outside
                version = self._state_version
                state = self.manager.get_state()
            try:
                self._write_state(state)
                self._written_version = version
            except Exception:
                log.exception("could not write the manager state to %s", self.state_path)
            written_at = time.monotonic()
            if self._stop.is_set() and self._written_version == self._state_version:
                return

    def _write_state(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def _load_state(self) -> bool:
        """Reload the persisted state; a corrupt or unreadable file is moved aside with a
        warning and the actor starts fresh (it must start whatever the file holds)."""
        try:
            with open(self.state_path) as fh:
                state = json.load(fh)
            self.manager.load_state(state)
        except FileNotFoundError:
            return False
        except Exception as exc:
            aside = self.state_path.with_name(f"{self.state_path.name}.corrupt-{time.time():.0f}")
            with contextlib.suppress(OSError):
                os.replace(self.state_path, aside)
            log.warning(
                "manager state %s is unreadable (%s: %s); moved it to %s and started fresh",
                self.state_path,
                type(exc).__name__,
                str(exc)[:200],
                aside,
            )
            self.manager = FaultToleranceManager(self.config)
            return False
        return True


def _severity(manager: FaultToleranceManager, node_id: str) -> str:
    if node_id in manager.liveness_failures:
        return "fatal"
    return manager.health_severity.get(node_id, "ok")


_RemoteManager: Any = ray.remote(concurrency_groups={"checkpoints": 1})(  # type: ignore[call-overload]
    ManagerActor
)


def get_manager(
    config: FTConfig | dict[str, Any] | None = None,
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    state_dir: str | None = None,
) -> Any:
    """The cluster's one detached manager actor, created on first call.

    Cluster-wide settings (liveness, health, breakers: ``ray_ft.config.CLUSTER_KEYS``) are
    fixed when the actor is created. A later driver whose ``config`` sets other values gets
    a warning naming both and does not overwrite them; call ``update_config`` on the handle
    to change them on purpose. ``state_dir`` (default ``./checkpoints/_manager`` on the head
    node) is where state is persisted.
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
    explicit = {} if config is None else _explicit_settings(config)
    if explicit:
        warn_on_conflict(explicit, ray.get(handle.cluster_config.remote(), timeout=60))
    return handle


def warn_on_conflict(explicit: Mapping[str, Any], in_force: Mapping[str, Any]) -> list[str]:
    """Warn about each cluster setting a driver set that differs from the one in force.

    ``explicit`` holds only the settings the driver passed (a driver that leaves them alone
    accepts the cluster's). Returns the conflicting keys.
    """
    conflicts = [
        key
        for key in CLUSTER_KEYS
        if key in explicit and key in in_force and in_force[key] != explicit[key]
    ]
    if conflicts:
        detail = ", ".join(f"{k}={explicit[k]!r} (in force: {in_force[k]!r})" for k in conflicts)
        msg = (
            "the ray_ft manager of this cluster already runs with other cluster-wide "
            f"settings; keeping its values: {detail}. Call "
            "get_manager().update_config.remote(...) to change them for every driver, or "
            "use the values in force"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return conflicts


def _explicit_settings(config: FTConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The cluster settings a driver chose: a dict's keys, or an FTConfig's non-defaults."""
    if isinstance(config, FTConfig):
        defaults = FTConfig().cluster_settings()
        return {k: v for k, v in config.cluster_settings().items() if v != defaults[k]}
    settings = FTConfig.coerce(config).cluster_settings()
    return {k: settings[k] for k in config if k in settings}


def shutdown_manager(handle: Any = None, *, timeout: float = 30.0) -> None:
    """Stop the manager actor (its probes too) for good; no error when it is already gone."""
    if handle is None:
        try:
            handle = ray.get_actor(DEFAULT_NAME, namespace=DEFAULT_NAMESPACE)
        except ValueError:
            return
    with contextlib.suppress(ray.exceptions.RayActorError):  # the expected answer: it exited
        ray.get(handle.shutdown.remote(), timeout=timeout)
