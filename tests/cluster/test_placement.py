"""Placement from the whole request, on the shared 3-node cluster plus a node with a custom
resource.

The remote function's own options (``@ray.remote(resources=...)``), the executor's and the
call's are merged; work goes only where the request fits, a request that fits nowhere is a
CapacityError with no node blamed; Ray's argument semantics hold for plain callables.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import ray

from ray_ft import FaultTolerantExecutor
from ray_ft.runtime.executor import CapacityError
from tests.raytools import kill_manager

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

CONFIG = {"retry_delay": 0.1, "max_retry_delay": 0.5, "capacity_wait_timeout": 3.0}


@pytest.fixture(scope="module")
def placed(cluster):
    """The shared cluster and a node with 2 ``special``, removed after the module (gracefully:
    Ray lists it dead at once, and the next module gets the cluster as it was)."""
    special = cluster.add_node(num_cpus=1, resources={"special": 2})
    cluster.wait_for_nodes()
    try:
        yield cluster, special.node_id
    finally:
        kill_manager()
        cluster.remove_node(special)


@ray.remote(num_cpus=0, resources={"special": 1})
def on_special(i: int) -> tuple[int, str]:
    return i, ray.get_runtime_context().get_node_id()


def where(i: int) -> tuple[int, str]:
    return i, ray.get_runtime_context().get_node_id()


def kinds(*args, **kwargs):
    return [type(a).__name__ for a in args], {k: type(v).__name__ for k, v in kwargs.items()}


def test_remote_functions_own_resources_are_respected(placed):
    _, special = placed
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        results = [f.result(timeout=120) for f in [ex.submit(on_special, i) for i in range(8)]]
        stats = ex.stats()
    assert [i for i, _ in results] == list(range(8))
    assert {node for _, node in results} == {special}
    assert (stats["retries"], stats["replaced"], stats["excluded_nodes"]) == (0, 0, [])


def test_call_options_resources_are_respected(placed):
    _, special = placed
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        view = ex.options(num_cpus=0, resources={"special": 1})
        results = list(view.map(where, range(8), timeout=120))
        stats = ex.stats()
    assert {node for _, node in results} == {special}
    assert (stats["retries"], stats["excluded_nodes"]) == (0, [])


def test_unschedulable_request_is_a_capacity_error_and_blames_no_node(placed):
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        future = ex.options(resources={"nowhere": 1}).submit(where, 0)
        with pytest.raises(CapacityError, match="nowhere=1"):
            future.result(timeout=120)
        assert ex.submit(where, 1).result(timeout=120)[0] == 1
        stats = ex.stats()
    assert stats["excluded_nodes"] == [] and stats["failures_by_type"] == {}


def test_top_level_object_refs_reach_plain_callables_as_values(placed):
    data = ray.put(np.arange(5))
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        args, kwargs = ex.submit(kinds, 1, data, [data], data=data, blob=data).result(120)
    assert args == ["int", "ndarray", "list"]  # the ref in a list stays a ref, as in Ray
    assert kwargs == {"data": "ndarray", "blob": "ndarray"}
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        assert ex.submit(lambda a, *, b: int(a.sum() + b.sum()), data, b=data).result(120) == 20


def test_per_call_options_do_not_grow_memory(placed):
    with FaultTolerantExecutor(CONFIG, manager=False) as ex:
        for f in [ex.options(timeout=30).submit(abs, -1) for _ in range(300)]:
            f.result(timeout=120)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(10):
            for f in [ex.options(timeout=30).submit(abs, -1) for _ in range(300)]:
                assert f.result(timeout=120) == 1
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, "*ray_ft*")]
    growth = sum(
        s.size_diff
        for s in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    )
    assert growth < 200_000, growth
