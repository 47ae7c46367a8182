"""The detached manager actor: the cluster's fault-tolerance state behind one RPC façade.

One per cluster (name + namespace). It wraps a FaultToleranceManager and answers executors
(reports, exclusions, trials, demand) and operators (status, breakers, settings). Its parts
run on their own threads: the probe fleet (``_probes``: one HealthProbe per node, liveness
and health loops), the state writer (``_state_writer``: the state file, coalesced, reloaded
when Ray restarts the actor, so breakers and failure history survive its own death while a
new cluster starts clean) and the cluster watch (``_cluster_watch``: demand, drains, idle nodes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import ray

from ray_ft import raycompat
from ray_ft.actors._checkpoint_keeper import CheckpointKeeper
from ray_ft.actors._cluster_watch import ElasticWatch
from ray_ft.actors._probes import FleetLinks, ProbeFleet
from ray_ft.actors._state_writer import StateWriter, load_manager
from ray_ft.actors.health_probe import OWN_WORKER
from ray_ft.checkpoints.storage import STORAGE_ENV, open_storage, resolve
from ray_ft.config import CLUSTER_KEYS, FTConfig
from ray_ft.failures import FailureEvent
from ray_ft.manager.state import FaultToleranceManager, WorkerStatus

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_NAMESPACE",
    "ManagerActor",
    "ensure_manager",
    "get_manager",
    "shutdown_manager",
]

log = logging.getLogger(__name__)

DEFAULT_NAME = "ray_ft_manager"
DEFAULT_NAMESPACE = "ray_ft"
_NODE_LOG = 10  # breaker transitions shown per node (``ray-ft why``)
_STARTING_S = 30.0  # a manager this process made is taken as new for this long
_made_here: dict[tuple[str, str], float] = {}  # (name, namespace) -> when this process made it


class ManagerActor:
    """The actor class; use :func:`get_manager` rather than instantiating it."""

    def __init__(self, config: dict[str, Any], state_dir: str | None = None) -> None:
        self.lock = threading.RLock()  # the manager's state, the fleet's tables
        self.config = FTConfig.from_json_dict(config)
        files = open_storage(state_dir or manager_state_dir(None), setting="storage")
        self.state_path = files.join(raycompat.session_name(), "manager_state.json")
        self.manager, self.restored = load_manager(files, self.state_path, self.config)
        self.started_at = time.time()
        self.stop = threading.Event()
        self.wake = threading.Event()  # a loop's wait ends early (new settings, shutdown)
        self.writer = StateWriter(files, self.state_path, self.lock, self._snapshot, self.stop)
        self.elastic = ElasticWatch(restarted=self.restored)
        self.fleet = ProbeFleet(
            FleetLinks(
                manager=self.manager,
                lock=self.lock,
                config=lambda: self.config,
                save=self.writer.save,
                elastic=self.elastic,
                stop=self.stop,
                wake=self.wake,
                restored=self.restored,
            )
        )
        self._checkpoints = CheckpointKeeper(self.state_path.rsplit("/", 1)[0] + "/checkpoints")
        self._refused = 0  # reports and trial requests for nodes Ray never reported
        self._threads = [
            threading.Thread(
                target=self.elastic.run, args=(self.stop,), name="ray_ft-elastic", daemon=True
            ),
            threading.Thread(target=self.fleet.liveness_loop, name="ray_ft-liveness", daemon=True),
            threading.Thread(target=self.fleet.health_loop, name="ray_ft-health", daemon=True),
            threading.Thread(target=self.writer.run, name="ray_ft-state", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- called by executors -------------------------------------------------------------

    def report_failures(self, events: list[FailureEvent]) -> None:
        """Take a batch of attempt failures (only node-blamed ones count toward breakers).

        An event naming a node Ray has never reported is refused: no state is made for it.
        """
        with self.lock:
            for event in events:
                if event.worker_id is not None and not self._known(event.worker_id):
                    self._refused += 1
                    log.warning(
                        "ignoring a failure report for %r: Ray reports no such node",
                        event.worker_id,
                    )
                    continue
                self.manager.report_failure(event)
            self.writer.save()

    def excluded_nodes(self, token: str | None = None) -> dict[str, Any] | None:
        """What executors must respect: excluded, failed, dead, degraded and HALF_OPEN
        nodes; None when the caller's ``token`` is current (nothing changed: nothing sent),
        else only what changed since ``token`` (or the whole snapshot when it is too old)."""
        with self.lock:
            return self.manager.exclusions_since(token)

    def elastic_view(
        self, driver: str, demand: dict[Any, int], token: int | None = None
    ) -> dict[str, Any] | None:
        """Take a driver's demand (what it would run at once, per request; empty: none) and
        answer node types and draining deadlines (None when ``token`` is current)."""
        return self.elastic.report(driver, demand, token)

    def acquire_trial(self, node_id: str) -> bool:
        """Take one trial slot of a HALF_OPEN node; False when none is left."""
        with self.lock:
            return self._known(node_id) and self.manager.acquire_trial(node_id)

    def report_trial(
        self, node_id: str, success: bool, failure: FailureEvent | None = None
    ) -> None:
        """The outcome of a trial task: success closes the breaker, failure reopens it."""
        with self.lock:
            if not self._known(node_id):
                return
            self.manager.record_trial(node_id, success, failure)
            self.writer.save()

    def _known(self, node_id: str) -> bool:
        """A node Ray has reported (alive or dead). A node newer than the last look at
        Ray's table gets one more look, at most once a second."""
        if node_id in self.manager.workers:
            return True
        if time.monotonic() - self.fleet.synced_at >= 1.0:
            self.fleet.sync_nodes()
        return node_id in self.manager.workers

    # -- operations ----------------------------------------------------------------------

    def open_breaker(self, node_id: str) -> None:
        """Trip a node's breaker by hand (an operator drill, or a test)."""
        with self.lock:
            self.manager.breaker(node_id).open()
            self.writer.save()

    def close_breaker(self, node_id: str) -> None:
        """Close a node's breaker by hand."""
        with self.lock:
            self.manager.breaker(node_id).close()
            self.writer.save()

    def cluster_config(self) -> dict[str, Any]:
        """The cluster-wide settings in force (see ``ray_ft.config.CLUSTER_KEYS``)."""
        return self.config.cluster_settings()

    def update_config(self, config: dict[str, Any]) -> None:
        """Adopt new settings explicitly (an operator's decision; drivers never call it)."""
        new = FTConfig.from_json_dict(config)
        with self.lock:
            if new == self.config:
                return
            self.config = new
            self.manager.update_config(new)
            self.fleet.relearn()  # the detectors relearn with the new settings
            self.writer.save()
        self.wake.set()

    def probe_now(self) -> dict[str, Any]:
        """Run one health round at once and return the status (for the CLI and tests)."""
        self.fleet.sync_nodes()
        self.fleet.health_round()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Every node: status, severity and reasons, breaker, latency, recent failures."""
        with self.lock:
            m, fleet = self.manager, self.fleet
            now = time.monotonic()
            transitions = m.transitions_by_node(_NODE_LOG)
            nodes = {}
            for node_id, info in sorted(m.workers.items()):
                report = fleet.last_report.get(node_id, {})
                recent = [e.to_dict() for e in m.history if e.worker_id == node_id][-5:]
                detector = fleet.book.detectors.get(node_id)
                latency = fleet.latency.get(node_id)
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
                    "probe_misses": fleet.misses.get(node_id, 0),
                    "last_probe_at": report.get("time"),
                    "has_probe": node_id in fleet.probes,
                    # a drain notice (spot preemption, scale-down): leaving is nobody's fault
                    "drain": self.elastic.drain_state(node_id),
                    "recent_failures": recent,
                    "transitions": transitions.get(node_id, []),
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
                "probe_rounds": fleet.rounds,
                "liveness_rounds": fleet.liveness_rounds,
                "started_at": self.started_at,
                "checkpoints": self._checkpoints.counts(),
                "refused_reports": self._refused,
                "state_version": self.writer.version,
                "state_written_version": self.writer.written_version,
                "observer_suspect": m.observer_suspect,
                "degraded": sorted(m.degraded),
                "mass_degraded": m.mass_degraded,
                "ray": _ray_release(),
            }

    def get_state(self) -> dict[str, Any]:
        """The wrapped manager's JSON state."""
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return self.manager.get_state()  # read at each write: update_config replaces it

    def probe_handles(self) -> dict[str, Any]:
        """Node id -> probe actor handle (tests check one per node)."""
        with self.lock:
            return dict(self.fleet.probes)

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
    def get_checkpoint(self, run_id: str, step: int, from_disk: bool = False) -> list[Any]:
        """``[ref]`` of one checkpoint (wrapped in a list so the caller gets the ref itself);
        ``from_disk``: read back and put again (the caller found the object gone)."""
        return [self._checkpoints.get(run_id, step, from_disk=from_disk)]

    @ray.method(concurrency_group="checkpoints")
    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Drop one checkpoint (its object is freed when no one else holds it)."""
        self._checkpoints.delete(run_id, step)

    def shutdown(self) -> None:
        """Stop the probe threads, kill the probes and exit without restart."""
        self.stop.set()
        self.wake.set()
        self.writer.wake()  # the writer flushes what is pending, then ends
        for thread in self._threads:
            thread.join(timeout=self.config.probe_timeout + 5)
        with self.lock:
            self.fleet.kill_all()
        ray.actor.exit_actor()


def _ray_release() -> dict[str, Any]:
    """The cluster's Ray release, whether ray_ft is tested on it, and what it lacks."""
    return {
        "version": ray.__version__,
        "problem": raycompat.support_problem(),
        "without": sorted(k for k, has in raycompat.capabilities().items() if not has),
    }


def manager_state_dir(storage: str | None) -> str:
    """Where the manager keeps its state: ``_manager`` under the storage in force."""
    return resolve("_manager", storage)


def _severity(manager: FaultToleranceManager, node_id: str) -> str:
    return manager.verdicts.severity_of(node_id)


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
    a warning naming both (when the manager answers: nothing waits for it) and does not
    overwrite them; call ``update_config`` on the handle to change them on purpose.
    ``state_dir`` is where its state is kept (default: ``_manager`` under the storage,
    ``FTConfig.storage`` or ``$RAY_FT_STORAGE``, else ``~/ray_ft`` on the manager's node).
    """
    return ensure_manager(config, name=name, namespace=namespace, state_dir=state_dir)[0]


def ensure_manager(
    config: FTConfig | dict[str, Any] | None = None,
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    state_dir: str | None = None,
) -> tuple[Any, bool]:
    """(the manager's handle, whether it is established: False for one made now, or made
    by this process in the last 30 s, which is still starting). Never waits for the actor
    to start: on a fresh cluster there is nothing it could know yet."""
    if not ray.is_initialized():
        ray.init()
    raycompat.warn_if_unsupported()
    cfg = FTConfig.coerce(config)
    try:
        handle = ray.get_actor(name, namespace=namespace)
        # made by this process moments ago (get_manager() just before the executor): it is
        # still starting, and knows nothing yet
        existed = time.monotonic() - _made_here.get((name, namespace), -math.inf) > _STARTING_S
    except ValueError:
        # The actor never decides retries: leave out exception classes it may not import.
        actor_config = {**cfg.to_dict(), "retry_exceptions": []}
        # the driver's storage setting when it has one; else the manager's node decides
        # (its $RAY_FT_STORAGE or home: the driver may be on another machine)
        chosen = cfg.storage or os.environ.get(STORAGE_ENV)
        if state_dir is not None:
            directory: str | None = resolve(state_dir, chosen)
        else:
            directory = manager_state_dir(chosen) if chosen else None
        handle, existed = (
            _RemoteManager.options(
                name=name,
                namespace=namespace,
                get_if_exists=True,  # another driver may be creating it right now
                lifetime="detached",
                max_restarts=-1,
                max_task_retries=-1,
                num_cpus=0,
                resources={"node:__internal_head__": 0.001},
                runtime_env=OWN_WORKER,
            ).remote(actor_config, directory),
            False,
        )
        _made_here[(name, namespace)] = time.monotonic()
    explicit = {} if config is None else _explicit_settings(config)
    if explicit:
        _warn_when_answered(handle, explicit)
    return handle, existed


def _warn_when_answered(handle: Any, explicit: Mapping[str, Any]) -> None:
    """Compare the driver's settings with the manager's once it answers (not waited for)."""

    def compare(answer: Any) -> None:
        try:
            warn_on_conflict(explicit, answer.result())
        except Exception as exc:  # the manager is restarting or gone: nothing to compare
            log.debug("could not read the manager's settings: %s", exc)

    handle.cluster_config.remote().future().add_done_callback(compare)


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
