"""A worker node in a process of its own, as a machine's raylet is (for tests that kill a
head and start another): ``python -m tests.worker_node GCS_ADDRESS NUM_CPUS [IP]``. Another
loopback address as IP (127.0.0.2) makes the node a machine of its own as Ray sees it.

``ray start --address`` refuses a worker node when Ray binds to loopback only
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as every test runs), so the node is made as
``ray.cluster_utils.Cluster.add_node`` makes one. It lives until this process is killed.
"""

from __future__ import annotations

import signal
import sys

import ray._private.node
import ray._private.parameter


def main() -> None:
    gcs_address, num_cpus = sys.argv[1], int(sys.argv[2])
    ip = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address,
        node_ip_address=ip,
        num_cpus=num_cpus,
        num_gpus=0,
        object_store_memory=150 * 1024 * 1024,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,
    )
    params.dashboard_agent_listen_port = None
    ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    signal.pause()


if __name__ == "__main__":
    main()
