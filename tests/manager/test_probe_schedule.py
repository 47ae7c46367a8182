"""When the manager starts a node's probe (no Ray: the fleet's schedule alone).

A probe is a new worker process on its node, and a new node starts one at a time: on an
autoscaled cluster a node that joins for waiting work gets its probe only once it has
settled, so the job's first calls there never wait for it (bench figure 19; measured 3-13 s
from join to first start with probes at once, 2.4-2.7 s without, as plain Ray).
"""

from __future__ import annotations

import threading
import time

from ray_ft.actors import _probes
from ray_ft.actors._cluster_watch import ElasticWatch
from ray_ft.actors._probes import FleetLinks, ProbeFleet
from ray_ft.config import FTConfig
from ray_ft.manager.state import FaultToleranceManager


def fleet(*, autoscaled: bool, restored: bool = False, delay: float = 0.0) -> ProbeFleet:
    config = FTConfig(probe_start_delay=delay)
    elastic = ElasticWatch(discover=lambda: (autoscaled, None), read_draining=lambda: {})
    elastic.autoscaled = autoscaled
    links = FleetLinks(
        manager=FaultToleranceManager(config),
        lock=threading.RLock(),
        config=lambda: config,
        save=lambda: None,
        elastic=elastic,
        stop=threading.Event(),
        wake=threading.Event(),
        restored=restored,
    )
    probes = ProbeFleet(links)
    probes._initial = {"head", "w1"}  # the fleet's first look
    return probes


def test_the_first_nodes_get_probes_after_the_fleet_delay_only():
    probes = fleet(autoscaled=False, delay=5.0)
    assert not probes._probe_due("w1")  # the fleet's own start delay
    probes.probes_from = time.monotonic()
    assert probes._probe_due("w1") and probes._probe_due("head")
    assert probes._initial == set()  # the table empties as probes start


def test_on_an_autoscaled_cluster_a_fresh_manager_lets_every_node_settle_first():
    probes = fleet(autoscaled=True)
    assert not probes._probe_due("w1")  # the job that made the manager is starting there
    probes._born -= _probes._JOIN_DELAY_S
    assert probes._probe_due("w1")
    # a restarted manager probes at once: the cluster was running
    assert fleet(autoscaled=True, restored=True)._probe_due("w1")


def test_an_autoscaled_node_gets_its_probe_once_it_has_settled():
    probes = fleet(autoscaled=True)
    assert not probes._probe_due("new")  # it just came, for waiting work
    probes._joined["new"] -= _probes._JOIN_DELAY_S - 0.5
    assert not probes._probe_due("new")
    probes._joined["new"] -= 1.0
    assert probes._probe_due("new")
    assert "new" not in probes._joined


def test_without_an_autoscaler_a_node_added_by_hand_is_probed_at_once():
    probes = fleet(autoscaled=False)
    assert probes._probe_due("added")
    assert probes._joined == {}
