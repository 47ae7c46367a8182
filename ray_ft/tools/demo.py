"""The demo behind ``ray-ft demo`` (and ``make demo``): an optimization that survives chaos.

A local 3-node cluster on 127.0.0.1; the GeneticAlgorithm on 10-D Rastrigin through a
FaultTolerantExecutor while a ChaosMonkey kills workers and a drill slows one node 5x,
freezes another and later kills it; a checkpoint every generation; a summary that counts
lost evaluations (0) and, with --verify, compares the result with a fault-free reference run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ray_ft.checkpoints.disk import DiskCheckpointStore
from ray_ft.config import FTConfig
from ray_ft.nodes import alive_nodes
from ray_ft.optim.ga import GeneticAlgorithm
from ray_ft.optim.run import GenerationReport, OptimizationResult, optimize

__all__ = ["DemoOptions", "calibrate", "rastrigin", "run_demo"]

DEMO_CONFIG = FTConfig(
    max_retries=8,
    retry_delay=0.1,
    max_retry_delay=1.0,
    task_timeout=20.0,
    health_check_interval=0.5,
    probe_timeout=1.0,
    probe_failure_threshold=2,
    breaker_timeout=5.0,
    worker_failure_threshold=50,
    checkpoint_interval=1,
)


_BURN_ROUNDS = 100  # rounds of work when not calibrated
EVAL_TARGET_MS = 20.0  # CPU time of one demo evaluation, calibrated when the demo starts
_SLOW_AT_S, _SLOW_FOR_S = 2.0, 8.0  # the slow-node drill: when, and for how long


def rastrigin(x: Any, rounds: int = _BURN_ROUNDS) -> float:
    """10-D Rastrigin (minimum 0 at the origin) after real CPU work, as an evaluation does.

    The work (``rounds`` of element-wise numpy math seeded by ``x``, single-threaded, so a
    worker and the driver take the same time) keeps the evaluating core at 100 %: a busy
    node must not be mistaken for a broken one. The fitness does not depend on ``rounds``.
    """
    x = np.asarray(x, dtype=np.float64)
    _burn(x, rounds)
    return float(10 * x.size + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))


def _burn(x: Any, rounds: int) -> float:
    a = np.resize(np.outer(np.cos(x), np.sin(x)), (96, 96)) + 1.0
    for _ in range(rounds):
        a = np.tanh(np.sqrt(a * a + 1.0) - 0.5)
    return float(a[0, 0])


def calibrate(target_ms: float = EVAL_TARGET_MS, clock: Any = time.perf_counter) -> int:
    """Rounds of work that take about ``target_ms`` on this machine (best of 3 timings)."""
    x = np.linspace(-1.0, 1.0, 10)
    probe = 50
    _burn(x, probe)  # warm
    best = float("inf")
    for _ in range(3):
        started = clock()
        _burn(x, probe)
        best = min(best, clock() - started)
    return max(1, round(target_ms / 1e3 / max(best / probe, 1e-9)))


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``ray-ft demo`` was asked for."""

    generations: int = 40
    population: int = 32
    nodes: int = 3
    seed: int = 0
    eval_ms: float = EVAL_TARGET_MS
    resume: bool = False
    verify: bool = False
    chaos: bool = True
    checkpoint_dir: str = "checkpoints/demo"


def _make_optimizer(opts: DemoOptions) -> GeneticAlgorithm:
    return GeneticAlgorithm(10, (-5.12, 5.12), opts.population, seed=opts.seed)


class _DropRayNoise:
    """A stdout that drops the raylet's worker-death notices the injected faults cause."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._dropped = False

    def write(self, text: str) -> int:
        if "(raylet)" in text or "(ManagerActor" in text or (self._dropped and text == "\n"):
            self._dropped = text != "\n"
            return len(text)
        self._dropped = False
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()


class _Bar:
    """One progress line per generation: bar, best fitness, failures so far."""

    def __init__(self, out: TextIO, failures: Any) -> None:
        self.out = out
        self.failures = failures
        self.tty = out.isatty()

    def __call__(self, report: GenerationReport) -> None:
        width = 30
        filled = int(width * report.generation / max(1, report.generations))
        line = (
            f"gen {report.generation:3d}/{report.generations} [{'#' * filled}"
            f"{'.' * (width - filled)}] best {report.best_fitness:9.4f}  "
            f"failures {self.failures():3d}  evals {report.evaluations}"
        )
        end = "\r" if self.tty and report.generation < report.generations else "\n"
        self.out.write(line + end)
        self.out.flush()


def _node_drill(
    stop: threading.Event, events: list[Any], freeze_at: float, kill_at: float, freeze_s: float
) -> None:
    """Slow one worker node 5x for a while (alive, answering probes: it must not be
    excluded), freeze another, let it thaw, later kill it; bounded, stops by itself."""

    from ray_ft.tools import chaos

    head = chaos._head_node()
    others = [n for n in alive_nodes() if n != head]
    if not others:
        return
    target = sorted(others)[0]
    if len(others) > 1 and not stop.wait(_SLOW_AT_S):
        with contextlib.suppress(Exception):
            events.append(chaos.slow_node(sorted(others)[-1], 5.0, _SLOW_FOR_S))
    if stop.wait(max(0.0, freeze_at - _SLOW_AT_S)):
        return
    with contextlib.suppress(Exception):
        events.append(chaos.freeze_node(target, freeze_s))
    if stop.wait(max(0.0, kill_at - freeze_at)):
        return
    with contextlib.suppress(Exception):
        events.append(chaos.kill_node(target))


def run_demo(opts: DemoOptions, out: TextIO | None = None, *, quiet_ray: bool = True) -> int:
    """Run the demo; returns the exit status (0 when nothing was lost)."""
    out = out or sys.stdout
    if not quiet_ray:
        return _run_demo(opts, out)
    with contextlib.redirect_stdout(_DropRayNoise(sys.stdout)):
        return _run_demo(opts, out)


def _run_demo(opts: DemoOptions, out: TextIO) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from ray_ft.actors.manager_actor import get_manager, shutdown_manager
    from ray_ft.runtime.executor import FaultTolerantExecutor
    from ray_ft.tools.chaos import ChaosMonkey

    root = Path(opts.checkpoint_dir)
    if not opts.resume and root.exists():
        shutil.rmtree(root)
    store = DiskCheckpointStore(root, keep_last=3)
    if opts.resume and store.latest_step() is None:
        out.write(f"no checkpoint under {root} to resume from; starting from generation 0\n")

    rounds = calibrate(opts.eval_ms)
    objective = functools.partial(rastrigin, rounds=rounds)
    out.write(
        f"one evaluation: {rounds} rounds of numpy work (~{opts.eval_ms:g} ms of CPU here)\n"
        f"starting a local {opts.nodes}-node Ray cluster on 127.0.0.1 ...\n"
    )
    started = time.monotonic()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    for _ in range(opts.nodes - 1):
        cluster.add_node(num_cpus=1)
    ray.init(
        address=cluster.address,
        namespace="ray_ft_demo",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    cluster.wait_for_nodes()
    manager = get_manager(DEMO_CONFIG, state_dir=str(root.parent / "_manager"))
    chaos_events: list[Any] = []
    stop = threading.Event()
    monkey = ChaosMonkey(
        interval_s=1.5,
        actions=("kill_worker",),
        seed=opts.seed,
        max_events=12,
        max_duration_s=300,
        name_part="rastrigin",
    )
    drill = threading.Thread(
        target=_node_drill, args=(stop, chaos_events, 6.0, 16.0, 4.0), daemon=True
    )
    interrupted = False
    result: OptimizationResult | None = None
    stats: dict[str, Any] = {}
    try:
        with FaultTolerantExecutor(DEMO_CONFIG, manager=manager) as ex:
            if opts.chaos:
                monkey.start()
                drill.start()
            run_started = time.monotonic()
            try:
                result = optimize(
                    objective,
                    _make_optimizer(opts),
                    generations=opts.generations,
                    executor=ex,
                    checkpoint_store=store,
                    checkpoint_interval=1,
                    resume=opts.resume,
                    progress=_Bar(out, lambda: sum(ex.stats()["failures_by_type"].values())),
                )
            except KeyboardInterrupt:
                interrupted = True
            finally:
                stop.set()
                chaos_events.extend(monkey.stop())
            elapsed = time.monotonic() - run_started
            stats = ex.stats()
            status = ray.get(manager.status.remote(), timeout=30)
            if interrupted:
                ex.shutdown(wait=False, cancel_futures=True)
    finally:
        with contextlib.suppress(Exception):
            shutdown_manager(manager)
        ray.shutdown()
        with contextlib.suppress(Exception):
            cluster.shutdown()
    if interrupted or result is None:
        step = store.latest_step()
        out.write(
            f"\ninterrupted: the checkpoint of generation {step} in {root} is valid; "
            "continue with: ray-ft demo --resume\n"
        )
        return 130
    _summary(out, opts, result, stats, status, chaos_events, elapsed, time.monotonic() - started)
    if opts.verify:
        reference = optimize(objective, _make_optimizer(opts), generations=opts.generations)
        same = (
            reference.history == result.history
            and reference.best is not None
            and result.best is not None
            and reference.best.genome.tobytes() == result.best.genome.tobytes()
            and reference.evaluations == result.evaluations
        )
        out.write(
            f"verify: result identical to a fault-free reference run: {'yes' if same else 'NO'}\n"
        )
        if not same:
            return 1
    return 0 if not result.failed_evaluations else 1


def _summary(
    out: TextIO,
    opts: DemoOptions,
    result: OptimizationResult,
    stats: dict[str, Any],
    status: dict[str, Any],
    chaos_events: list[Any],
    elapsed: float,
    total: float,
) -> None:
    by_type = stats.get("failures_by_type", {})
    transitions = status.get("breaker_transitions", [])
    excluded_ever = sorted({t["worker_id"] for t in transitions if t["to"] == "OPEN"})
    targets = {e.node_id for e in chaos_events if e.action in ("freeze_node", "kill_node")}
    wrongly = [n[:8] for n in excluded_ever if n not in targets]
    injected: dict[str, int] = {}
    for event in chaos_events:
        injected[event.action] = injected.get(event.action, 0) + 1
    best = result.best.fitness if result.best is not None else float("nan")
    rows = [
        ("evaluations", f"{result.evaluations}"),
        ("lost evaluations", f"{len(result.failed_evaluations)}"),
        ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(injected.items())) or "none"),
        ("retries", f"{stats.get('retries', 0)}"),
        ("failures by type", ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())) or "none"),
        ("attempts abandoned", f"{stats.get('abandoned', 0)}"),
        (
            "backups of stragglers",
            f"{stats.get('speculated', 0)} ({stats.get('speculation_wins', 0)} won)",
        ),
        ("nodes excluded", ", ".join(n[:8] for n in excluded_ever) or "none"),
        ("excluded without a fault", ", ".join(wrongly) or "none"),
        ("breaker transitions", f"{len(transitions)}"),
        (
            "resumed from",
            "-" if result.resumed_from is None else f"generation {result.resumed_from}",
        ),
        ("time", f"{elapsed:.1f} s optimizing, {total:.1f} s in all"),
        ("best fitness", f"{best:.6f}"),
    ]
    width = max(len(k) for k, _ in rows)
    out.write("\nray_ft demo summary\n" + "-" * (width + 30) + "\n")
    for key, value in rows:
        out.write(f"{key:<{width}}  {value}\n")
