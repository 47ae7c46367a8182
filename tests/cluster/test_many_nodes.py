"""The largest cluster this machine holds: 12 one-CPU raylets on 2 cores (about 16 s to
start, 21 GB free after). CPU-bound work while one node is frozen and another killed:
every call done once, and only those two nodes excluded."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from ray_ft import FaultTolerantExecutor, get_manager
from tests.raytools import cluster_session, freeze, thaw, wait_for_probes

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

N_NODES = 12
#: probes from the manager's start: the test waits for all twelve anyway (~23 s here with
#: the default 5 s delay)
CONFIG = {"max_retries": 5, "retry_delay": 0.2, "probe_start_delay": 0.0}


@pytest.fixture(scope="module")
def twelve():
    with cluster_session(N_NODES) as cluster:
        yield cluster


def evaluate(i: int) -> tuple[int, float]:
    """A fixed amount of numpy work (about 0.1 s here): every core busy, no sleep."""
    rng = np.random.default_rng(i)
    x = rng.random(20_000)
    for _ in range(400):
        x = np.sqrt(x * x + 1.0) % 7.0
    return i, float(x[0])


def test_twelve_nodes_one_frozen_one_killed_only_those_excluded(twelve, tmp_path):
    manager = get_manager(CONFIG, state_dir=str(tmp_path))
    wait_for_probes(manager, twelve, timeout=120)
    workers = twelve.list_all_nodes()[1:]  # never the head: it holds the manager
    frozen_node, killed_node = workers[3], workers[7]
    expected = [evaluate(i) for i in range(4)]
    frozen: list[int] = []
    try:
        with FaultTolerantExecutor(CONFIG) as ex:
            futures = [ex.submit(evaluate, i) for i in range(120)]
            time.sleep(2.0)
            frozen = freeze(frozen_node)
            time.sleep(1.0)
            twelve.remove_node(killed_node, allow_graceful=False)
            results = [f.result(timeout=300) for f in futures]
            stats = ex.stats()
    finally:
        thaw(frozen)
    assert [r[0] for r in results] == list(range(120))  # every call once, none lost
    assert results[:4] == expected  # the same answers as a local run
    excluded = set(ray.get(manager.excluded_nodes.remote())["excluded"])
    assert frozen_node.node_id in excluded
    assert excluded <= {frozen_node.node_id, killed_node.node_id}, stats
    assert stats["failed"] == 0
