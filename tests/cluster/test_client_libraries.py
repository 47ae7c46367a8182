"""Real optimizer and scheduling libraries driving the executor on a real 3-node cluster:
SciPy's differential_evolution(workers=ex.map), dask.compute(scheduler=ex), DEAP's
toolbox map, Optuna's ask-and-tell, nevergrad's minimize(executor=ex). Each run must give
the answer of the same run with the builtin map, with CPU-bound objectives (no sleeps)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ray_ft import FaultTolerantExecutor

pytestmark = pytest.mark.cluster  # starts a real Ray cluster


def busy_sphere(x) -> float:
    """A sphere with a little real numpy work in front (about a millisecond, no sleep)."""
    v = np.asarray(x, dtype=float)
    w = np.linspace(0.0, 1.0, 2_000)
    for _ in range(20):
        w = np.sqrt(w * w + 1.0) % 3.0
    return float(np.sum((v - 0.5) ** 2) + 0.0 * w[0])


def inc(i: int) -> int:
    return i + 1


@pytest.fixture(scope="module")
def ex(cluster):
    with FaultTolerantExecutor(manager=False) as executor:
        yield executor


def test_scipy_differential_evolution_through_ex_map(ex):
    optimize = pytest.importorskip("scipy.optimize")
    kwargs = {"bounds": [(-2, 2)] * 3, "seed": 3, "maxiter": 15, "popsize": 8, "tol": 0}
    local = optimize.differential_evolution(
        busy_sphere, workers=map, updating="deferred", polish=False, **kwargs
    )
    before = ex.stats()["succeeded"]
    remote = optimize.differential_evolution(
        busy_sphere, workers=ex.map, updating="deferred", polish=False, **kwargs
    )
    assert np.array_equal(remote.x, local.x) and remote.fun == local.fun
    assert ex.stats()["succeeded"] - before == remote.nfev


def test_dask_compute_with_the_executor_as_scheduler(ex):
    dask = pytest.importorskip("dask")
    parts = [dask.delayed(inc)(i) for i in range(2_000)]
    pairs = [dask.delayed(sum)(parts[i : i + 2]) for i in range(0, 2_000, 2)]
    total = dask.delayed(sum)(pairs)
    (expected,) = dask.compute(total, scheduler="sync")
    before = ex.stats()["batched_calls"]
    (got,) = dask.compute(total, scheduler=ex)
    assert got == expected == sum(range(1, 2_001))
    # dask sizes its submissions by the executor's _max_workers: enough for tiny tasks
    # to queue up and be packed
    assert ex.stats()["batched_calls"] > before


def test_deap_ea_simple_with_the_executor_map(ex):
    deap = pytest.importorskip("deap")
    from deap import algorithms, base, creator, tools

    if not hasattr(creator, "FitnessMinFT"):
        creator.create("FitnessMinFT", base.Fitness, weights=(-1.0,))
        creator.create("IndividualFT", list, fitness=creator.FitnessMinFT)

    def run(mapper) -> list[float]:
        random.seed(11)
        toolbox = base.Toolbox()
        toolbox.register("attr", random.uniform, -2, 2)
        toolbox.register("individual", tools.initRepeat, deap.creator.IndividualFT, toolbox.attr, 4)
        toolbox.register("population", tools.initRepeat, list, toolbox.individual)
        toolbox.register("evaluate", lambda ind: (busy_sphere(ind),))
        toolbox.register("mate", tools.cxBlend, alpha=0.5)
        toolbox.register("mutate", tools.mutGaussian, mu=0, sigma=0.3, indpb=0.3)
        toolbox.register("select", tools.selTournament, tournsize=3)
        toolbox.register("map", mapper)
        population = toolbox.population(n=24)
        final, _ = algorithms.eaSimple(population, toolbox, 0.6, 0.3, 6, verbose=False)
        return sorted(ind.fitness.values[0] for ind in final)

    assert run(ex.map) == run(map)


def test_optuna_ask_and_tell_with_the_executor(ex):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def run(mapper) -> list[float]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=5))
        for _ in range(4):
            trials = [study.ask() for _ in range(6)]
            points = [[t.suggest_float(f"x{k}", -2, 2) for k in range(2)] for t in trials]
            for trial, value in zip(trials, mapper(busy_sphere, points), strict=True):
                study.tell(trial, value)
        return [t.value for t in study.trials]

    assert run(ex.map) == run(map)


def test_nevergrad_minimize_with_the_executor(ex):
    ng = pytest.importorskip("nevergrad")
    parametrization = ng.p.Array(shape=(2,))
    parametrization.random_state.seed(7)
    # TwoPointsDE: NGOpt's metamodel step fails inside nevergrad 1.0.12 with NumPy 2
    optimizer = ng.optimizers.TwoPointsDE(parametrization=parametrization, budget=40, num_workers=4)
    before = ex.stats()["succeeded"]
    recommendation = optimizer.minimize(busy_sphere, executor=ex, batch_mode=True)
    assert ex.stats()["succeeded"] - before == 40
    assert busy_sphere(recommendation.value) < busy_sphere([0.0, 0.0])
