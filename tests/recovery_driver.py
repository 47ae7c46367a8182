"""A driver process for the recovery test: runs optimize(), may SIGKILL itself.

usage: recovery_driver.py ADDRESS CKPT_DIR OPTIMIZER GENERATIONS KILL_AFTER_GEN OUT_JSON
"""

from __future__ import annotations

import json
import os
import signal
import sys

import ray

from ray_ft import DiskCheckpointStore, FaultTolerantExecutor, optimize
from tests.recovery_common import CONFIG, make_optimizer, slow_rastrigin


def main() -> None:
    address, ckpt, kind, generations, kill_after, out = sys.argv[1:7]
    ray.init(address=address, namespace="ray_ft_tests", log_to_driver=False)
    store = DiskCheckpointStore(ckpt, keep_last=3)

    def progress(report):
        if report.checkpointed and report.generation == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies right after a checkpoint

    with FaultTolerantExecutor(CONFIG) as ex:
        result = optimize(
            slow_rastrigin,
            make_optimizer(kind),
            generations=int(generations),
            executor=ex,
            checkpoint_store=store,
            checkpoint_interval=2,
            progress=progress,
        )
        submitted = ex.stats()["submitted"]
    with open(out, "w") as fh:
        json.dump(
            {
                "history": result.history,
                "best": result.best.genome.tobytes().hex(),
                "evaluations": result.evaluations,
                "submitted_here": submitted,
                "resumed_from": result.resumed_from,
            },
            fh,
        )


if __name__ == "__main__":
    main()
