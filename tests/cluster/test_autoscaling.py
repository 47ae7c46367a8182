"""On Ray's real autoscaler (the fake multi-node provider: real raylets on this machine).

The same work runs under plain Ray first and under ray_ft second, on the same cluster:
ray_ft's queue must be demand the autoscaler sees (from zero nodes of a shape, and beyond
the minimum), its own actors must not keep idle nodes alive, nodes scaled down charge
nothing, and a request no node type can meet fails at once. Figures (ratios to plain Ray)
are in ``bench/``; here the bounds are generous and only guard against a stall.
"""

from __future__ import annotations

import time

import pytest
import ray

from ray_ft import CapacityError, FaultTolerantExecutor
from ray_ft.actors.manager_actor import get_manager
from tests.autoscaling import Peaks, autoscaling_cluster, wait_for_count
from tests.raytools import wait_for

pytestmark = pytest.mark.cluster

TYPES = {
    # a shape no node has until the autoscaler launches one
    "sim": {"resources": {"CPU": 1, "sim": 1}, "min_workers": 0, "max_workers": 3},
    # a type the cluster keeps one of
    "base": {"resources": {"CPU": 1, "base": 1}, "min_workers": 1, "max_workers": 3},
}
CONFIG = {"capacity_wait_timeout": 300, "max_retries": 3}


def sleepy(i: int, seconds: float = 2.0) -> tuple[int, str]:
    time.sleep(seconds)
    return i, ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def autoscaled():
    with autoscaling_cluster({"CPU": 1}, TYPES, idle_timeout_minutes=0.1) as address:
        ray.init(address=address, namespace="ray_ft_tests")
        wait_for_count("base", 1, timeout=120)
        yield address


def _both_at_minimum(timeout: float = 120) -> float:
    """Seconds until no ``sim`` worker is left and one ``base`` worker is (the minimum)."""
    start = time.monotonic()
    wait_for_count("sim", 0, timeout=timeout)
    wait_for_count("base", 1, timeout=max(1.0, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


def test_scale_from_zero_and_beyond_the_minimum_and_back(autoscaled):
    """Six calls of a shape no node has (0 -> 3 workers) and nine of a type kept at one
    node (1 -> 3), at once: the cluster grows as for plain Ray and after the work shrinks
    back to its minimum as fast, with the manager alive and the executor still open; a
    node scaled down while the executor runs work elsewhere charges nothing."""
    _both_at_minimum()
    sim, base = (ray.remote(resources={r: 1})(sleepy) for r in ("sim", "base"))
    start = time.monotonic()
    with Peaks("sim", "base") as plain_peak:
        ray.get([sim.remote(i) for i in range(6)] + [base.remote(i) for i in range(9)], timeout=300)
        plain_s = time.monotonic() - start
    plain_down = _both_at_minimum()

    manager = get_manager(CONFIG)
    with FaultTolerantExecutor(CONFIG) as ex:
        start = time.monotonic()
        with Peaks("sim", "base") as ft_peak:
            futures = [ex.options(resources={"sim": 1}).submit(sleepy, i) for i in range(6)]
            futures += [ex.options(resources={"base": 1}).submit(sleepy, i) for i in range(9)]
            results = [f.result(timeout=300) for f in futures]
            ft_s = time.monotonic() - start
        assert [i for i, _ in results] == [*range(6), *range(9)]
        # it grew, from zero and past one, never past the types' maximum; how many nodes
        # come up before six 2 s calls end is the fake provider's timing (one CI run ended
        # with 2 under ray_ft and 3 under plain Ray), so time is held against plain Ray
        peaks = {"ray_ft": ft_peak.peak, "plain": plain_peak.peak}
        assert all(2 <= ft_peak[r] <= 3 for r in ("sim", "base")), peaks
        # a stall, not a ratio: the ratio is bench figure 19's (median of 3 runs; one
        # autoscaler run varies by 25 %). Two runs in one session read 31 and 37 s against
        # 15.5 s while the autoscaler was still scaling down from the plain half (adding
        # and removing nodes at once); cause not pinned down, see the closing note
        assert ft_s < 3 * plain_s + 30, (ft_s, plain_s, peaks)

        # one long call keeps one worker busy while the others are scaled down
        long = ex.options(resources={"sim": 1}).submit(sleepy, 99, 10.0)
        wait_for_count("sim", 1, timeout=60)
        assert long.result(timeout=120)[0] == 99
        ft_down = _both_at_minimum()
        stats = ex.stats()
        status = ray.get(manager.status.remote())
    assert ft_down < plain_down + 20, (ft_down, plain_down)
    assert stats["retries"] == 0 and stats["failures_by_type"] == {}
    assert stats["excluded_nodes"] == [] and stats["abandoned"] == 0
    assert status["failures_total"] == 0 and status["excluded"] == []
    assert status["elastic"]["autoscaled"] and status["elastic"]["resource_requests"] >= 2
    assert status["elastic"]["requested_bundles"] == 0  # nothing asked after the work


def test_demand_is_capped_by_max_in_flight(autoscaled):
    """With max_workers=1 the executor asks for one slot, not one per queued call: the
    type kept at one node does not grow."""
    _both_at_minimum()
    with (
        FaultTolerantExecutor(CONFIG, max_workers=1, resources={"base": 1}) as ex,
        Peaks("base") as peak,
    ):
        results = list(ex.map(sleepy, range(3), [1.0] * 3, timeout=300))
    assert [i for i, _ in results] == [0, 1, 2]
    assert peak["base"] == 1, peak.peak


def test_infeasible_request_fails_fast_naming_the_node_types(autoscaled):
    # the claim needs a manager that has read the node types (unknown types wait, by
    # design); two CI runs waited out the call with nothing excluded or draining
    manager = get_manager(CONFIG)

    def elastic():
        return ray.get(manager.status.remote())["elastic"]

    wait_for(lambda: elastic()["node_types"], timeout=90, interval=1.0)
    with FaultTolerantExecutor(CONFIG) as ex:
        start = time.monotonic()
        future = ex.options(resources={"tpu": 1}).submit(sleepy, 1)
        try:
            future.exception(timeout=120)
        except TimeoutError:  # say what both saw, and do not wait out the call
            stats = ex.stats()
            ex.shutdown(wait=False, cancel_futures=True)
            pytest.fail(f"no CapacityError within 120 s: {stats}; manager: {elastic()}")
        with pytest.raises(CapacityError) as info:
            future.result(timeout=0)
        waited = time.monotonic() - start
    message = str(info.value)
    assert "tpu=1" in message and "sim (CPU=1, sim=1; max 3)" in message, message
    assert waited < 15, waited
    # a request some type can meet still waits for the autoscaler and runs
    with FaultTolerantExecutor(CONFIG) as ex:
        assert ex.options(resources={"sim": 1}).submit(sleepy, 2, 0.5).result(timeout=300)[0] == 2
