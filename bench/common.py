"""Shared helpers for the benchmarks: a local cluster on 127.0.0.1 and result tables."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from ray.cluster_utils import Cluster


@contextlib.contextmanager
def local_cluster(n_nodes: int = 3, cpus_per_node: int = 1) -> Iterator[Cluster]:
    """A head plus workers on this machine, the driver connected; always torn down."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False},
    )
    ray.init(address=cluster.address, namespace="ray_ft_bench", log_to_driver=False)
    # connected before the workers join: Ray before 2.60 connects a driver to any raylet
    # on its host, and a test that removes "worker nodes" must not remove the driver's
    for _ in range(n_nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            from ray_ft.actors.manager_actor import DEFAULT_NAME, DEFAULT_NAMESPACE

            ray.kill(ray.get_actor(DEFAULT_NAME, namespace=DEFAULT_NAMESPACE), no_restart=True)
        ray.shutdown()
        cluster.shutdown()


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def machine() -> str:
    """Cores, Python and Ray version, for the results header."""
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
