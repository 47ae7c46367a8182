"""Out-of-memory retries for real: Ray's memory monitor kills tasks that each hold a large
array when too many share the machine; ray_ft's retries ask for more ``memory`` so fewer
share a node, and the batch completes."""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from ray_ft import FaultTolerantExecutor

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

GiB = 2**30
ALLOC = 2 * GiB  # what one task holds
NODE_MEMORY = 4 * GiB  # each node's logical memory: two tasks' share per node of 2 CPUs


def hog(i: int) -> int:
    """Hold ALLOC bytes (touched) for a moment."""
    block = np.ones(ALLOC // 8)
    time.sleep(1.5)
    return i + int(block[0]) - 1


@pytest.fixture(scope="module")
def tight_cluster():
    """3 nodes x 2 CPUs; the memory monitor kills above ~3.5 tasks' worth of memory."""
    memory = psutil.virtual_memory()
    used = memory.total - memory.available
    threshold = (used + 1.5 * GiB + 3.5 * ALLOC) / memory.total
    if threshold > 0.9:
        pytest.skip(f"not enough free memory for the scenario ({used / GiB:.1f} GiB in use)")
    with pytest.MonkeyPatch.context() as patch:  # read by the raylets started here
        patch.setenv("RAY_memory_usage_threshold", f"{threshold:.4f}")
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "memory": NODE_MEMORY, "include_dashboard": False},
        )
        for _ in range(2):
            cluster.add_node(num_cpus=2, memory=NODE_MEMORY)
    try:
        ray.init(address=cluster.address, namespace="ray_ft_tests")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_oom_killed_tasks_complete_once_retries_ask_for_more_memory(tight_cluster):
    config = {"retry_delay": 0.1, "max_retry_delay": 0.5, "jitter": "none", "max_retries": 4}
    with FaultTolerantExecutor(config, manager=False) as ex:
        assert list(ex.map(hog, range(8), timeout=300)) == list(range(8))
        stats = ex.stats()
    assert stats["failures_by_type"].get("out_of_memory", 0) >= 1, stats
    assert stats["failed"] == 0
    # twice the share it had (4 GiB over 2 CPUs), capped at the largest node: one per node
    assert stats["memory_raised"] == {"hog": NODE_MEMORY}
