"""Figure 18: adaptive batching. Tiny calls through the executor with batching on and off
against raw Ray (one ``f.remote()`` per call), side by side, interleaved, one cluster.

Also: 10 ms and 1 s CPU-bound calls, the latency of one call on an idle executor, a Dask
graph of a few thousand small tasks, SciPy's differential_evolution with a cheap
objective, and where the driver's time per call goes (cProfile of both driver threads).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from typing import Any

import ray
from common import local_cluster, summary, table

from ray_ft import FaultTolerantExecutor

REPEATS = 3
TRIVIAL = 3_000


def trivial(i: int) -> int:
    return i


def spin(seconds: float, i: int) -> int:
    """CPU-bound for ``seconds`` (no sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return i


def ten_ms(i: int) -> int:
    return spin(0.01, i)


def one_s(i: int) -> int:
    return spin(1.0, i)


def rosen(x: Any) -> float:
    from scipy.optimize import rosen as scipy_rosen

    return float(scipy_rosen(x))


def raw(fn: Any, n: int) -> float:
    remote = ray.remote(max_retries=3)(fn)
    start = time.perf_counter()
    assert ray.get([remote.remote(i) for i in range(n)]) == list(range(n))
    return n / (time.perf_counter() - start)


def via_submit(ex: FaultTolerantExecutor, fn: Any, n: int) -> float:
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
    assert [f.result() for f in futures] == list(range(n))
    return n / (time.perf_counter() - start)


def via_map(ex: FaultTolerantExecutor, fn: Any, n: int) -> float:
    start = time.perf_counter()
    assert list(ex.map(fn, range(n))) == list(range(n))
    return n / (time.perf_counter() - start)


def throughput(on: Any, off: Any, repeats: int) -> list[list[Any]]:
    cases = [
        ("3,000 trivial, submit()", trivial, TRIVIAL, via_submit, 2.0),
        ("3,000 trivial, map()", trivial, TRIVIAL, via_map, 3.0),
        ("300 calls of 10 ms CPU, submit()", ten_ms, 300, via_submit, 1.0),
    ]
    rows = []
    for label, fn, n, how, goal in cases:
        raw(fn, min(n, 300))
        how(on, fn, min(n, 300))
        how(off, fn, min(n, 300))
        rates: dict[str, list[float]] = {"raw": [], "on": [], "off": []}
        for rep in range(repeats):
            runs = [
                ("raw", lambda fn=fn, n=n: raw(fn, n)),
                ("on", lambda fn=fn, n=n, how=how: how(on, fn, n)),
                ("off", lambda fn=fn, n=n, how=how: how(off, fn, n)),
            ]
            for name, run in runs if rep % 2 == 0 else runs[::-1]:
                rates[name].append(run())
        base = statistics.median(rates["raw"])
        ratio_on = statistics.median(rates["on"]) / base
        ratio_off = statistics.median(rates["off"]) / base
        rows.append(
            [
                label,
                f"{base:,.0f}/s",
                f"{ratio_on:.2f}x ({summary(rates['on'])['min'] / base:.2f}-"
                f"{summary(rates['on'])['max'] / base:.2f})",
                f"{ratio_off:.2f}x",
                f">= {goal:g}x: {'met' if ratio_on >= goal else 'missed'}",
            ]
        )
    return rows


def slow_calls(on: FaultTolerantExecutor) -> str:
    before = on.stats()["batches"]
    assert list(on.map(one_s, range(6))) == list(range(6))
    return f"6 calls of 1 s CPU through map(): {on.stats()['batches'] - before} batches"


def latency(on: FaultTolerantExecutor, off: FaultTolerantExecutor) -> str:
    samples: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(40):
        for name, ex in (("on", on), ("off", off)) if i % 2 else (("off", off), ("on", on)):
            time.sleep(0.05)  # idle between calls
            start = time.perf_counter()
            assert ex.submit(trivial, i).result() == i
            samples[name].append(time.perf_counter() - start)
    on_ms = statistics.median(samples["on"]) * 1e3
    off_ms = statistics.median(samples["off"]) * 1e3
    return f"one call on an idle executor: {on_ms:.2f} ms with batching, {off_ms:.2f} ms without"


def dask_graph(on: Any, off: Any) -> list[list[Any]]:
    import dask

    def inc(i: int) -> int:
        return i + 1

    def graph() -> Any:
        parts = [dask.delayed(inc)(i) for i in range(3_000)]
        pairs = [dask.delayed(sum)(parts[i : i + 2]) for i in range(0, 3_000, 2)]
        return dask.delayed(sum)(pairs)

    (expected,) = dask.compute(graph(), scheduler="sync")
    times: dict[str, list[float]] = {"on": [], "off": []}
    for rep in range(2):
        for name, ex in (("on", on), ("off", off)) if rep % 2 == 0 else (("off", off), ("on", on)):
            start = time.perf_counter()
            (got,) = dask.compute(graph(), scheduler=ex)
            times[name].append(time.perf_counter() - start)
            assert got == expected
    on_s, off_s = min(times["on"]), min(times["off"])
    return [
        ["Dask, 4,501 tasks", f"{on_s:.2f} s", f"{off_s:.2f} s", f"{off_s / on_s:.2f}x", "same"]
    ]


def scipy_de(on: Any, off: Any) -> list[list[Any]]:
    from scipy.optimize import differential_evolution

    kwargs = {"bounds": [(-2, 2)] * 5, "seed": 1, "maxiter": 30, "popsize": 15, "tol": 0}
    results, times = {}, {}
    for name, ex in (("on", on), ("off", off)):
        start = time.perf_counter()
        results[name] = differential_evolution(
            rosen, workers=ex.map, updating="deferred", polish=False, **kwargs
        )
        times[name] = time.perf_counter() - start
    same = (
        list(results["on"].x) == list(results["off"].x) and results["on"].fun == results["off"].fun
    )
    local = differential_evolution(rosen, workers=map, updating="deferred", polish=False, **kwargs)
    same = same and list(local.x) == list(results["on"].x)
    return [
        [
            f"SciPy differential_evolution, {results['on'].nfev} evaluations",
            f"{times['on']:.2f} s",
            f"{times['off']:.2f} s",
            f"{times['off'] / times['on']:.2f}x",
            "identical" if same else "DIFFERENT",
        ]
    ]


def profile(ex: FaultTolerantExecutor, n: int = TRIVIAL) -> list[tuple[str, float]]:
    """Driver CPU per call by function (both threads: the caller's and the loop's)."""
    loop_profile, caller_profile = cProfile.Profile(), cProfile.Profile()
    step = ex._loop.step

    def profiled_step() -> str:
        loop_profile.enable()
        try:
            return step()
        finally:
            loop_profile.disable()

    ex._loop.step = profiled_step  # type: ignore[method-assign]
    try:
        caller_profile.enable()
        futures = [ex.submit(trivial, i) for i in range(n)]
        assert [f.result() for f in futures] == list(range(n))
        caller_profile.disable()
    finally:
        ex._loop.step = step  # type: ignore[method-assign]
    stats = pstats.Stats(caller_profile)
    stats.add(loop_profile)
    rows = [
        (f"{func[2]} ({func[0].rsplit('/', 1)[-1]}:{func[1]})", tottime / n * 1e6)
        for func, (_, _, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    return sorted(rows, key=lambda r: -r[1])[:8]


def run(repeats: int = REPEATS) -> str:
    with local_cluster(3):
        on = FaultTolerantExecutor(manager=False)
        off = FaultTolerantExecutor({"batching": False}, manager=False)
        try:
            rows = throughput(on, off, repeats)
            notes = [slow_calls(on), latency(on, off)]
            libraries = dask_graph(on, off) + scipy_de(on, off)
            profiles = {"on": profile(on), "off": profile(off)}
            counts = on.stats()
        finally:
            on.shutdown()
            off.shutdown()
    parts = [
        table(["calls", "raw Ray", "batching on / raw", "off / raw", "goal"], rows),
        "; ".join(notes)
        + f". Batching executor over the whole run: {counts['batches']:,} batches, "
        f"{counts['batched_calls']:,} calls in them.",
        table(["client library", "batching on", "off", "speed-up", "result"], libraries),
        "Driver time per call by function, 3,000 trivial calls via submit() (cProfile, wall "
        "clock, of the caller's thread and the executor's loop thread; `acquire` is the "
        "caller blocked on results, `wait` the loop blocked in `ray.wait`, `invocation` "
        "Ray's `.remote()`; profiling slows both alike):",
        table(
            ["batching on: function", "us/call", "batching off: function", "us/call"],
            [
                [a[0], f"{a[1]:.1f}", b[0], f"{b[1]:.1f}"]
                for a, b in zip(profiles["on"], profiles["off"], strict=False)
            ],
        ),
    ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(run())
