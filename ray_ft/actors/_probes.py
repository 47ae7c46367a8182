"""The manager actor's probe fleet: one HealthProbe per alive node, and its two loops.

The liveness loop pings each probe every ``liveness_interval`` and judges the answers with
a phi-accrual detector per node (their round trip is the node's latency); the health loop
asks each probe for a psutil/NVML verdict every ``health_check_interval``. Verdicts go to
the host's ``FaultToleranceManager`` under the host's lock; a node that leaves (Ray drops
it, or an idle autoscaled node lets its probe go) is forgotten here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from ray_ft.actors.health_probe import start_probe
from ray_ft.manager.liveness import LivenessBook, PhiAccrualDetector
from ray_ft.manager.state import WorkerStatus
from ray_ft.metrics import get_metrics
from ray_ft.nodes import alive_nodes

if TYPE_CHECKING:
    from ray_ft.actors._cluster_watch import ElasticWatch
    from ray_ft.config import FTConfig
    from ray_ft.manager.state import FaultToleranceManager

__all__ = ["FleetLinks", "ProbeFleet"]

log = logging.getLogger(__name__)

_JOIN_DELAY_S = 15.0  # a node the autoscaler added gets its probe this long after it came

PROBE_STARTUP_GRACE_S = 30.0  # a probe silent this long from its start is started again
_JUDGE_EVERY_S = 0.2  # how often silences are judged between heartbeats
_SWEEP_S = 0.02  # after the first answer of a burst, the others get this long to land
_TOMBSTONE_S = 120.0  # a node Ray reports gone is forgotten after this long
_OBSERVER_STALL_FACTOR = 3.0  # a liveness round this many intervals late: the actor stalled


@dataclasses.dataclass(frozen=True, slots=True)
class FleetLinks:
    """What the fleet is given by the manager actor that hosts it, and nothing more."""

    manager: FaultToleranceManager  #: verdicts go here, through its methods, under ``lock``
    lock: threading.RLock  #: the manager's state and the fleet's tables
    config: Callable[[], FTConfig]  #: the settings now (``update_config`` replaces them)
    save: Callable[[], None]  #: ask the state writer for a save (coalesced)
    elastic: ElasticWatch  #: drain notices and which nodes keep a probe
    stop: threading.Event  #: the actor shuts down
    wake: threading.Event  #: a loop's wait ends early (new settings, shutdown)
    restored: bool  #: the manager restarted (its probes went with the old actor)


class ProbeFleet:
    """The probes of the host manager actor, their heartbeats and health answers."""

    def __init__(self, links: FleetLinks) -> None:
        self._host = links
        self._health_lock = threading.Lock()  # health rounds never overlap
        self.probes: dict[str, Any] = {}  #: node -> its probe actor
        self._probe_started: dict[str, float] = {}  # node -> when its probe was started
        self.book = LivenessBook(self._new_detector)  #: heartbeats and deadlines per node
        self._pings: dict[str, tuple[Any, float]] = {}  # node -> (ping ref, sent at)
        self._ping_nodes: dict[Any, str] = {}  # ping ref -> node
        self._never_answered: set[str] = set()  # probes started, no heartbeat yet
        self._metrics_at = 0.0
        self.latency: dict[str, float] = {}  #: node -> smoothed ping round trip (s)
        self._health_pending: dict[str, Any] = {}  # node -> health check ref out
        self.misses: Counter[str] = Counter()  #: consecutive health checks missed
        self.last_report: dict[str, dict[str, Any]] = {}  #: node -> its last health answer
        self.rounds = 0  #: health rounds done
        self.liveness_rounds = 0  #: liveness rounds done
        self.synced_at = -float("inf")  #: the last look at Ray's node table
        # a fresh manager on a fresh cluster starts its probes once the job's first calls
        # have their workers (new processes compete for the same cores); a restarted one
        # at once (the cluster was running: its probes were lost with the old actor)
        delay = 0.0 if links.restored else links.config().probe_start_delay
        self._born = time.monotonic()
        self.probes_from = self._born + delay  #: when probes are first started
        # on an autoscaled cluster a node that joins later gets its probe _JOIN_DELAY_S after
        # it appeared: it came for waiting work, a probe is a new worker process and a new
        # node starts one at a time, so the first calls there would wait for it (measured:
        # 3-13 s from join to first start with probes at 0 or 5 s, 2.4-2.7 s without, as
        # plain Ray's 1.1-3.3 s). A node no one has heard from is never judged meanwhile.
        self._joined: dict[str, float] = {}  # node -> when it was first seen (later joiners)
        self._initial: set[str] | None = None  # the nodes of the first look (fleet delay only)

    def relearn(self) -> None:
        """Start the detectors afresh (new liveness settings)."""
        self.book = LivenessBook(self._new_detector)

    def kill_all(self) -> None:
        """Kill every probe (the actor shuts down for good)."""
        for probe in self.probes.values():
            ray.kill(probe)
        self.probes.clear()

    def sync_nodes(self) -> None:
        """Follow Ray's node table: register new nodes, start probes, drop dead ones."""
        self.synced_at = time.monotonic()
        alive = alive_nodes()
        thresholds = {
            "cpu": self._host.config().cpu_threshold,
            "memory": self._host.config().memory_threshold,
            "disk": self._host.config().disk_threshold,
            "gpu_temp": self._host.config().gpu_temp_threshold,
            "gpu_memory": self._host.config().gpu_memory_threshold,
        }
        changed = False
        if self._initial is None:
            self._initial = set(alive)
        with self._host.lock:
            for node_id, node in alive.items():
                info = self._host.manager.workers.get(node_id)
                capacity = int(node["Resources"].get("CPU", 0))
                if info is None or info.status == WorkerStatus.DEAD or info.capacity != capacity:
                    self._host.manager.register_worker(node_id, capacity)
                    changed = True
                if not self._host.elastic.keeps_probe(node_id, node["Resources"]):
                    if node_id in self.probes:  # an idle autoscaled node: let it go
                        self._drop_probe(node_id)
                        self._forget_node(node_id)
                    continue
                if node_id not in self.probes and self._probe_due(node_id):
                    gpus = int(node["Resources"].get("GPU", 0))
                    self.probes[node_id] = start_probe(node_id, thresholds, gpus)
                    self._probe_started[node_id] = time.monotonic()
                    if node_id not in self.book.detectors:
                        self._never_answered.add(node_id)
            for node_id in list(self.probes):
                if node_id not in alive:
                    self._drop_probe(node_id)
                    self._forget_node(node_id)
            for node_id in [n for n in self._joined if n not in alive]:
                del self._joined[node_id]  # the tables follow the live set
            self._initial &= alive.keys()
            for node_id, info in self._host.manager.workers.items():
                if node_id not in alive and info.status != WorkerStatus.DEAD:
                    self._host.manager.mark_worker_dead(node_id)
                    changed = True
            # a node gone this long is forgotten: every table holds the live cluster
            changed = bool(self._host.manager.prune_departed(_TOMBSTONE_S)) or changed
            if changed:
                self._host.save()

    def _probe_due(self, node_id: str) -> bool:
        """A node's probe may start: after the fleet's start delay, and on an autoscaled
        cluster, for a node that joined after the fleet's first look, once it is settled."""
        now = time.monotonic()
        joined = None
        if self._initial is None or node_id not in self._initial:
            joined = self._joined.setdefault(node_id, now)
        if now < self.probes_from:
            return False
        if self._host.elastic.autoscaled and not self._host.restored:
            # every node of an autoscaled cluster is settling while the job's first calls
            # start: its first nodes too (a fresh manager came with the job)
            since = self._born if joined is None else joined
            if now - since < _JOIN_DELAY_S:
                return False
        self._joined.pop(node_id, None)
        if self._initial is not None:
            self._initial.discard(node_id)  # shrinks to nothing: no table outlives its nodes
        return True

    def _new_detector(self) -> PhiAccrualDetector:
        return PhiAccrualDetector(
            threshold=self._host.config().liveness_phi_threshold,
            timeout_floor=self._host.config().liveness_timeout_floor,
            expected_interval=self._host.config().liveness_interval,
        )

    def liveness_loop(self) -> None:
        last_round: float | None = None
        while not self._host.stop.is_set():
            started = time.monotonic()
            interval = self._host.config().liveness_interval
            if last_round is not None and started - last_round > _OBSERVER_STALL_FACTOR * interval:
                # this actor itself stalled (its node is busy or was paused): the silence
                # is ours, not the nodes'
                with self._host.lock:
                    self.book.forgive(started - last_round - interval, started)
            last_round = started
            try:
                self.sync_nodes()
                with self._host.lock:
                    if self._host.manager.expire_trial_leases():
                        self._host.save()
                self._liveness_round(started + interval)
            except Exception:  # the loop must outlive any one bad round
                log.exception("liveness round failed")
                self._host.wake.wait(interval)
                self._host.wake.clear()

    def _liveness_round(self, deadline: float) -> None:
        """Ping every probe that has no ping out, collect answers until ``deadline``, judge.

        A wake-up waits for the first answer, then takes every answer that arrived within
        _SWEEP_S in one sweep: O(pings out) per wake-up, never per answer, and judging
        looks only at the nodes whose deadline passed (LivenessBook).
        """
        with self._host.lock:
            for node_id, probe in self.probes.items():
                if node_id not in self._pings:
                    ref = probe.ping.remote()
                    self._pings[node_id] = (ref, time.monotonic())
                    self._ping_nodes[ref] = node_id
        while not self._host.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._host.lock:
                refs = list(self._ping_nodes)
            if not refs:
                self._host.wake.wait(remaining)
                self._host.wake.clear()
                break
            ready, _ = ray.wait(refs, num_returns=1, timeout=min(remaining, _JUDGE_EVERY_S))
            if ready:  # let a burst of answers land, then take them all at once
                time.sleep(_SWEEP_S)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            arrived = time.monotonic()
            for ref in ready:
                with self._host.lock:
                    pinged = self._ping_nodes.pop(ref) if ref in self._ping_nodes else None
                if pinged is not None:
                    self._take_ping(pinged, ref, arrived)
            self._judge_liveness(arrived)
        self.liveness_rounds += 1

    def _take_ping(self, node_id: str, ref: Any, arrived: float) -> None:
        with self._host.lock:
            sent = self._pings.pop(node_id, (None, arrived))[1]
        try:
            ray.get(ref, timeout=0)
        except Exception as exc:  # the probe died: replace it; no heartbeat
            log.warning("probe on node %s failed: %s", node_id, str(exc).splitlines()[0])
            with self._host.lock:
                self._drop_probe(node_id)
            return
        with self._host.lock:
            self._never_answered.discard(node_id)
            back = self.book.heartbeat(node_id, arrived)
            if back or self._host.manager.failed_by_liveness(node_id):
                self._host.manager.update_liveness(node_id, True)
                self._host.save()
            rtt = arrived - sent
            previous = self.latency.get(node_id)
            self.latency[node_id] = rtt if previous is None else 0.8 * previous + 0.2 * rtt

    def _judge_liveness(self, now: float) -> None:
        """Verdicts for the nodes whose deadline passed (and probes that never answered):
        O(verdicts), not O(nodes)."""
        changed = False
        with self._host.lock:
            for node_id in self.book.judge(now):
                info = self._host.manager.workers.get(node_id)
                if info is None or info.status == WorkerStatus.DEAD:
                    continue
                if self._host.elastic.drain_state(node_id):
                    continue  # going on notice: its silence is the drain, not a fault
                detector = self.book.detectors[node_id]
                silence, phi = detector.silence(now), detector.phi(now)
                reason = (
                    f"stopped answering heartbeats ({silence:.1f}s silent, phi "
                    f"{min(phi, 99):.1f} > {detector.threshold:g})"
                )
                if self._host.manager.update_liveness(node_id, False, reason):
                    log.warning("node %s %s: marking it failed", node_id, reason)
                    changed = True
                else:  # held back (most nodes look failed: the observer is suspect)
                    self.book.recheck(node_id, now + _JUDGE_EVERY_S)
            for node_id in list(self._never_answered):
                # never evidence against a node: a probe that never answered may not have
                # started (a GCS away, a busy node); it is started again, nothing more
                waited = now - self._probe_started.get(node_id, now)
                if waited >= PROBE_STARTUP_GRACE_S and node_id in self.probes:
                    log.info(
                        "the probe on node %s has not answered in %.0fs; starting it again",
                        node_id,
                        waited,
                    )
                    self._drop_probe(node_id)
            if changed:
                self._host.save()
            if now - self._metrics_at >= 1.0:  # a gauge per node: once a second is plenty
                self._metrics_at = now
                self._export_metrics()

    def health_loop(self) -> None:
        while not self._host.stop.is_set():
            try:
                self.health_round()
            except Exception:  # the loop must outlive any one bad round
                log.exception("health round failed")
            self._host.wake.wait(self._host.config().health_check_interval)
            self._host.wake.clear()

    def health_round(self) -> None:
        """Ask every probe for a health verdict; unanswered checks count as misses.

        Rounds never overlap (``probe_now`` and the thread share a lock), so one late
        check is one miss.
        """
        with self._health_lock:
            with self._host.lock:
                for node_id, probe in self.probes.items():
                    if node_id not in self._health_pending:
                        self._health_pending[node_id] = probe.check.remote()
                pending = dict(self._health_pending)
            refs = list(pending.values())
            ready, _ = ray.wait(
                refs,
                num_returns=len(refs),
                timeout=self._host.config().probe_timeout,
                fetch_local=True,
            )
            ready_set = set(ready)
            with self._host.lock:
                for node_id, ref in pending.items():
                    if ref in ready_set:
                        self._health_pending.pop(node_id, None)
                        self._take_health(node_id, ref)
                    elif node_id in self.probes:
                        self._count_miss(node_id)
                self.rounds += 1
                self._host.save()

    def _take_health(self, node_id: str, ref: Any) -> None:
        try:
            answer = ray.get(ref)
        except Exception as exc:  # the probe died; the liveness loop replaces it
            log.warning("health check on node %s failed: %s", node_id, str(exc).splitlines()[0])
            return
        self.misses.pop(node_id, None)
        self.last_report[node_id] = {
            k: answer.get(k) for k in ("healthy", "severity", "reasons", "time", "health")
        }
        severity = answer.get("severity") or ("ok" if answer["healthy"] else "fatal")
        self._host.manager.update_health(node_id, severity, list(answer["reasons"]))

    def _count_miss(self, node_id: str) -> None:
        if node_id in self._never_answered or node_id not in self.latency:
            return  # its probe never answered yet: judged only once it has (liveness)
        self.misses[node_id] += 1
        misses = self.misses[node_id]
        config = self._host.config()
        if misses >= config.probe_failure_threshold:
            reason = f"missed {misses} consecutive health checks (timeout {config.probe_timeout}s)"
            self._host.manager.update_health(node_id, "fatal", [reason])

    def _export_metrics(self) -> None:
        metrics = get_metrics()
        for node_id, info in self._host.manager.workers.items():
            if info.status == WorkerStatus.DEAD:
                continue
            metrics.node(
                node_id, self._host.manager.breaker(node_id).state.value, info.status == "alive"
            )

    def _forget_node(self, node_id: str) -> None:
        """A node Ray reports gone: its probe history starts afresh if it ever rejoins."""
        self._probe_started.pop(node_id, None)
        self.book.forget([node_id])
        self._never_answered.discard(node_id)
        self.latency.pop(node_id, None)
        self.misses.pop(node_id, None)
        self.last_report.pop(node_id, None)
        self._host.manager.forget_liveness(node_id)

    def _drop_probe(self, node_id: str) -> None:
        probe = self.probes.pop(node_id, None)
        ping = self._pings.pop(node_id, None)
        if ping is not None:
            self._ping_nodes.pop(ping[0], None)
        self._health_pending.pop(node_id, None)
        if probe is not None:
            try:
                ray.kill(probe)
            except Exception:
                log.debug("could not kill probe on %s", node_id, exc_info=True)
