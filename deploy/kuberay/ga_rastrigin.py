"""An optimize() job for a KubeRay RayJob (deploy/kuberay/rayjob.yaml) or `ray job submit`.

A GA on Rastrigin whose checkpoints go under the cluster's storage (``RAY_FT_STORAGE``, a
bucket): when the head is replaced and the job is submitted again (RayJob's
``backoffLimit``), it resumes from its newest checkpoint and ends with the result a run
without faults gives. ``GENERATIONS`` and ``CHECKPOINT`` override the defaults.
"""

from __future__ import annotations

import json
import os

import numpy as np
import ray

from ray_ft import DiskCheckpointStore, FaultTolerantExecutor, GeneticAlgorithm, optimize


def rastrigin(genome: np.ndarray) -> float:
    x = np.asarray(genome, dtype=float)
    return float(10 * x.size + np.sum(x * x - 10 * np.cos(2 * np.pi * x)))


def main() -> None:
    ray.init()  # the cluster this job was submitted to
    store = DiskCheckpointStore(os.environ.get("CHECKPOINT", "checkpoints/ga_rastrigin"))
    with FaultTolerantExecutor() as executor:
        result = optimize(
            rastrigin,
            GeneticAlgorithm(10, (-5.12, 5.12), population_size=32, seed=7),
            generations=int(os.environ.get("GENERATIONS", "100")),
            executor=executor,
            checkpoint_store=store,
            checkpoint_interval=2,
        )
    best = result.best
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "resumed_from": result.resumed_from,
                "generation": result.generation,
                "best_fitness": None if best is None else best.fitness,
                "history": result.history,
            }
        )
    )


if __name__ == "__main__":
    main()
