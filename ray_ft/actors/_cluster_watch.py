"""The manager's watch over an elastic cluster: one thread, the only one that asks the GCS.

Every second it sums the drivers' reported demand into one
``ray.autoscaler.sdk.request_resources(bundles=...)`` (cluster-wide, last call wins: only
the manager makes it), reads the draining nodes and their deadlines (preemption notices),
and, where an autoscaler runs, which worker nodes are idle (their probes leave, or the
probe alone would keep the node from being scaled down). Executors get node types and
draining deadlines back from ``report``, which never waits on the GCS.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psutil
import ray

from ray_ft import raycompat
from ray_ft.manager.demand import (
    DemandBook,
    IdleNodes,
    NodeType,
    NodeTypes,
    node_types_from_config,
)
from ray_ft.nodes import request_resources

__all__ = ["ElasticWatch", "discover_node_types"]

log = logging.getLogger(__name__)

_STEP_S = 1.0
_DRAINED_KEEP_S = 300.0  # a node that left on notice is shown as such this long
_DISCOVER_EVERY_S = 30.0  # an autoscaler started (or reconfigured) later is found


def discover_node_types() -> tuple[bool, NodeTypes | None]:
    """(an autoscaler runs, the worker types it launches or None when unknown).

    Autoscaler v2 (KubeRay) writes its cluster config to the GCS; v1 (``ray up``, the fake
    provider) runs a monitor process on the head that names its config file. The manager
    lives on the head, so it can read both.
    """
    try:
        config = raycompat.cluster_config()
    except Exception:
        config = None
    if config is not None and config.node_group_configs:
        types = tuple(
            NodeType(
                g.name, tuple(sorted((k, float(v)) for k, v in g.resources.items())), g.max_count
            )
            for g in config.node_group_configs
            if g.max_count != 0 or g.min_count
        )
        return True, NodeTypes(types)
    path = _monitor_config_path(_gcs_port())
    if path is None:
        return False, None
    try:
        import yaml

        with open(path) as f:
            loaded = yaml.safe_load(f)
    except Exception as exc:
        log.info("could not read the autoscaler config %s: %s", path, exc)
        return True, None
    return True, node_types_from_config(loaded) if isinstance(loaded, Mapping) else None


def _gcs_port() -> str | None:
    """The port of the GCS this process is connected to (None: not known)."""
    try:
        return str(ray.get_runtime_context().gcs_address).rsplit(":", 1)[1]
    except Exception:
        return None


def _monitor_config_path(
    gcs_port: str | None, cmdlines: Iterable[list[str]] | None = None
) -> str | None:
    """The ``--autoscaling-config`` of the autoscaler's monitor process on this node that
    serves the GCS on ``gcs_port`` (None: any). A machine may hold several clusters, or a
    monitor of one that is ending: another cluster's config is not this one's."""
    for cmd in _cmdlines() if cmdlines is None else cmdlines:
        if not any("monitor.py" in part or "autoscaler" in part for part in cmd[:3]):
            continue
        args = shlex.split(" ".join(cmd)) if len(cmd) == 1 else cmd
        flags = _flags(args)
        gcs = flags.get("--gcs-address")
        if gcs_port is not None and gcs is not None and gcs.rsplit(":", 1)[-1] != gcs_port:
            continue
        if "--autoscaling-config" in flags:
            return flags["--autoscaling-config"]
    return None


def _cmdlines() -> Iterator[list[str]]:
    for proc in psutil.process_iter(["cmdline"]):
        try:
            yield list(proc.info["cmdline"] or [])
        except (psutil.Error, KeyError):
            continue


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` arguments by name."""
    flags: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            flags[name] = value
        elif arg.startswith("--") and index + 1 < len(args):
            flags.setdefault(arg, args[index + 1])
    return flags


class ElasticWatch:
    """Demand, node types, draining deadlines and idle nodes for the manager actor."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        request: Callable[[list[dict[str, float]]], None] = request_resources,
        discover: Callable[[], tuple[bool, NodeTypes | None]] = discover_node_types,
        restarted: bool = False,
        read_draining: Callable[[], dict[str, float] | None] = raycompat.draining_nodes,
    ) -> None:
        self._clock = clock
        self._read_draining_nodes = read_draining
        self._request = request
        self._discover = discover
        self._lock = threading.Lock()
        self.book = DemandBook()
        self.idle = IdleNodes()
        self.autoscaled = False  # an autoscaler was found on this cluster
        self.node_types: NodeTypes | None = None
        self.draining: dict[str, float] = {}  # node id -> deadline (wall seconds; 0: none)
        # nodes that left while draining (preempted or scaled down): wall time they left
        self.drained: dict[str, float] = {}
        self.requests = 0  # request_resources calls made
        self.last_bundles: list[dict[str, float]] | None = None  # None: never asked
        self._view_version = 0
        self._asked_version = -1  # the demand version last sent to the autoscaler
        # a non-empty request stands, so clearing it is ours to do (after our own restart
        # one may: the request outlives the actor that made it)
        self._asked_any = restarted
        self._drains_read = False  # the drain list has been read once (or Ray cannot say)
        self._discovered_at = -float("inf")
        self._wake = threading.Event()  # a changed demand is asked for at once

    # -- called by executors (through the actor): never touches the GCS ------------------

    def report(
        self, driver: str, demand: Mapping[Any, int], token: int | None
    ) -> dict[str, Any] | None:
        """Take a driver's demand; answer the view (None when ``token`` is current)."""
        with self._lock:
            before = self.book.version
            self.book.report(driver, demand, self._clock())
            if self.book.drivers():
                # a driver may have asked the autoscaler itself while this manager started
                # (runtime ColdWatch): once demand was seen, clearing it is ours to do
                self._asked_any = True
            if self.book.version != before:
                self._wake.set()
            if token == self._view_version:
                return None
            return self.view()

    def view(self) -> dict[str, Any]:
        """What executors use: node types (None: unknown or no autoscaler) and deadlines."""
        return {
            "token": self._view_version,
            "autoscaled": self.autoscaled,
            "node_types": None if self.node_types is None else self.node_types.to_json(),
            "draining": dict(self.draining),
            "drains_read": self._drains_read,
        }

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "autoscaled": self.autoscaled,
                "node_types": None if self.node_types is None else self.node_types.describe(),
                "drivers_with_demand": self.book.drivers(),
                "requested_bundles": len(self.last_bundles or ()),
                "resource_requests": self.requests,
                "draining": dict(self.draining),
            }

    # -- the watch thread ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("elastic watch round failed")
            self._wake.wait(_STEP_S)
            self._wake.clear()

    def step(self) -> None:
        """One round: discover, expire, ask the autoscaler, read draining nodes and idleness."""
        now = self._clock()
        if now - self._discovered_at >= _DISCOVER_EVERY_S:
            self._discovered_at = now
            autoscaled, types = self._discover()
            if types is None and self.node_types is not None:
                # a round that could not read them (the monitor restarting, its config
                # file being rewritten) forgets nothing: infeasible work still fails fast
                autoscaled, types = self.autoscaled, self.node_types
            with self._lock:
                if (autoscaled, types) != (self.autoscaled, self.node_types):
                    self.autoscaled, self.node_types = autoscaled, types
                    self._view_version += 1
        with self._lock:
            self.book.expire(now)
            bundles = None
            if self.book.version != self._asked_version:
                bundles = self.book.bundles()
                version = self.book.version
        if bundles is not None and (bundles or self._asked_any) and bundles != self.last_bundles:
            try:
                self._request(bundles)
            except Exception as exc:  # the GCS is away: try again next round
                log.info("request_resources failed: %s", exc)
            else:
                self.requests += 1
                self.last_bundles = bundles
                self._asked_any = bool(bundles)
                self._asked_version = version
        elif bundles is not None:
            self._asked_version = version
        self._read_draining()
        if self.autoscaled:
            self._read_idle(now)

    def _read_draining(self) -> None:
        try:
            draining = self._read_draining_nodes()
        except Exception as exc:
            log.debug("get_draining_nodes failed: %s", exc)
            return
        if draining is None:  # this Ray cannot say: a drained node leaves as a death
            with self._lock:
                if not self._drains_read:
                    self._drains_read = True
                    self._view_version += 1
            return
        with self._lock:
            if not self._drains_read:  # executors watch drains themselves until this view
                self._drains_read = True
                self._view_version += 1
            if draining != self.draining:
                now = time.time()
                for node_id in self.draining.keys() - draining.keys():
                    self.drained[node_id] = now  # gone from the list: it left (or was undone)
                for node_id in [n for n, at in self.drained.items() if now - at > _DRAINED_KEEP_S]:
                    del self.drained[node_id]
                self.draining = draining
                self._view_version += 1

    def _read_idle(self, now: float) -> None:
        try:
            total, available = raycompat.resources_per_node()
        except Exception as exc:
            log.debug("resources per node failed: %s", exc)
            return
        self.idle.observe(total, available, now)

    def drain_state(self, node_id: str) -> str | None:
        """'draining' (a notice stands), 'drained' (it left on notice) or None."""
        if node_id in self.draining:
            return "draining"
        return "drained" if node_id in self.drained else None

    def keeps_probe(self, node_id: str, resources: Mapping[str, float]) -> bool:
        """A probe stays on (or goes to) this node: always without an autoscaler, else on
        the head and on worker nodes that are not idle."""
        if not self.autoscaled or "node:__internal_head__" in resources:
            return True
        return not self.idle.idle(node_id, self._clock())
