"""Optimizers: convergence within a documented budget, determinism, exact resume."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ray_ft import CMAES, DiskCheckpointStore, GeneticAlgorithm, Individual, optimize


def sphere(x):
    return float(np.sum(np.asarray(x) ** 2))


def rastrigin(x):
    x = np.asarray(x)
    return float(10 * len(x) + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))


# The documented budget (docs/internals.md, optimizers): 10-D sphere, population 32,
# 100 generations = 3,002 evals.
GA_BUDGET = {"population_size": 32, "generations": 100}


def test_ga_reaches_sphere_budget():
    ga = GeneticAlgorithm(10, (-5, 5), GA_BUDGET["population_size"], seed=7)
    result = optimize(sphere, ga, generations=GA_BUDGET["generations"])
    assert result.best.fitness < 1e-3
    assert result.evaluations == 32 + 99 * 30  # elites are not re-evaluated


def test_cmaes_reaches_sphere_budget():
    es = CMAES(10, 3.0, 2.0, seed=3, bounds=(-5, 5))
    result = optimize(sphere, es, generations=100)
    assert result.best.fitness < 1e-3


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeneticAlgorithm(6, (-5.12, 5.12), 16, seed=11, crossover="uniform"),
        lambda: CMAES(6, 1.0, 1.0, seed=11),
    ],
)
def test_pure_function_of_seed_and_fitness(make):
    a = optimize(rastrigin, make(), generations=12)
    b = optimize(rastrigin, make(), generations=12)
    assert a.history == b.history
    assert np.array_equal(a.best.genome, b.best.genome)


def test_global_numpy_state_does_not_leak_into_cmaes():
    a = optimize(sphere, CMAES(4, 1.0, 0.5, seed=5), generations=5)
    np.random.seed(123)
    opt = CMAES(4, 1.0, 0.5, seed=5)
    np.random.rand(100)
    b = optimize(sphere, opt, generations=5)
    assert a.history == b.history


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeneticAlgorithm(5, (-3, 3), 12, seed=2),
        lambda: CMAES(5, 1.0, 0.5, seed=2),
    ],
)
def test_checkpointed_resume_is_bitwise_identical(tmp_path, make):
    clean = optimize(rastrigin, make(), generations=10)
    store = DiskCheckpointStore(tmp_path, keep_last=None)
    first = optimize(
        rastrigin, make(), generations=4, checkpoint_store=store, checkpoint_interval=2
    )
    assert [i.step for i in store.list()] == [2, 4]
    resumed = optimize(
        rastrigin, make(), generations=10, checkpoint_store=store, checkpoint_interval=2
    )
    assert resumed.resumed_from == 4
    assert resumed.history == clean.history
    assert resumed.evaluations == clean.evaluations
    assert resumed.best.genome.tobytes() == clean.best.genome.tobytes()
    assert first.history == clean.history[:4]


def test_ga_state_json_and_pickle_round_trip():
    ga = GeneticAlgorithm(3, ([-1, -2, -3], [1, 2, 3]), 8, seed=1)
    optimize(sphere, ga, generations=3)
    state = json.loads(json.dumps(ga.get_state()))
    other = GeneticAlgorithm(3, ([-1, -2, -3], [1, 2, 3]), 8, seed=99)
    other.load_state(state)
    assert [i.genome.tolist() for i in other.ask()] == [i.genome.tolist() for i in ga.ask()]
    again = pickle.loads(pickle.dumps(ga))
    assert again.get_state() == ga.get_state()


def test_ga_refuses_state_from_other_settings():
    ga = GeneticAlgorithm(3, (-1, 1), 8, seed=1)
    optimize(sphere, ga, generations=1)
    with pytest.raises(ValueError, match="other GeneticAlgorithm settings"):
        GeneticAlgorithm(3, (-1, 1), 10).load_state(ga.get_state())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"bounds": (1, -1)}, "high > low"),
        ({"population_size": 1}, "population_size"),
        ({"elitism": 8}, "elitism"),
        ({"crossover": "one-point"}, "crossover"),
    ],
)
def test_ga_bad_arguments(kwargs, match):
    args = {"dim": 3, "bounds": (-1, 1), "population_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        GeneticAlgorithm(**args)


def test_individual_round_trips():
    ind = Individual(np.array([0.1, 1 / 3]), fitness=2.5, generation=4, metadata={"k": 1})
    assert Individual.from_dict(json.loads(json.dumps(ind.to_dict()))) == ind
    assert pickle.loads(pickle.dumps(ind)) == ind


def test_optimize_bad_arguments():
    with pytest.raises(ValueError, match="on_exhausted"):
        optimize(sphere, GeneticAlgorithm(2, (-1, 1), 4), generations=1, on_exhausted="ignore")
