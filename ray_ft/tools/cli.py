"""The ``ray-ft`` command: demo, status, checkpoints, probe.

Errors a user can fix (no cluster at the address, a missing path) print one line and exit
with status 2; logging is quiet unless -v is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

log = logging.getLogger("ray_ft.tools.cli")


class CliError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


# -- probe ---------------------------------------------------------------------------------


def _cmd_probe(args: argparse.Namespace) -> int:
    from ray_ft.health.monitor import HealthMonitor

    if args.raw and not args.json:
        raise CliError("--raw prints JSON; pass --json --raw")
    monitor = HealthMonitor(expected_gpus=args.expect_gpus, watch_xids=True)
    started = time.perf_counter()
    health = monitor.sample()
    sample_ms = (time.perf_counter() - started) * 1000
    report = monitor.check(health)
    if args.json:
        answer: dict[str, Any] = {
            "healthy": report.healthy,
            "severity": report.severity.value,
            "reasons": list(report.reasons),
            "sample_ms": round(sample_ms, 3),
            "health": health,
        }
        if args.raw:
            answer["raw"] = _raw_nvml()
        print(json.dumps(answer, indent=2, default=str))
        return 0 if report.healthy else 1
    print(f"healthy: {'yes' if report.healthy else 'NO'} (severity: {report.severity.value})")
    for reason in report.reasons:
        print(f"  - {reason}")
    print(
        f"cpu {health['cpu_percent']:.1f}%  memory {health['memory_percent']:.1f}% "
        f"({health['memory_available_gb']:.1f} GB free)  disk {health['disk_percent']:.1f}% "
        f"({health['disk_free_gb']:.1f} GB free)"
    )
    gpus = health["gpus"]
    print(f"gpus: {len(gpus)} (backend: {health.get('gpu_backend') or 'none'})")
    for gpu in gpus:
        print(
            f"  gpu {gpu.get('id')}: {gpu.get('name') or ''} load={gpu.get('load')} "
            f"memory={gpu.get('memory_used')}/{gpu.get('memory_total')} MB "
            f"temperature={gpu.get('temperature')} C"
        )
    return 0 if report.healthy else 1


def _raw_nvml() -> dict[str, Any]:
    """Every NVML call a health check makes, with value or exception class and latency."""
    from ray_ft.health.gpu import GpuBackendUnavailable, NvmlBackend

    started = time.perf_counter()
    try:
        backend = NvmlBackend()
    except GpuBackendUnavailable as exc:
        cause = exc.__cause__
        return {
            "init": "failed",
            "error": type(cause).__name__ if cause is not None else type(exc).__name__,
            "detail": str(exc),
            "init_ms": round((time.perf_counter() - started) * 1000, 3),
        }
    init_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    calls = backend.raw()
    return {
        "init": "ok",
        "init_ms": round(init_ms, 3),
        "read_ms": round((time.perf_counter() - started) * 1000, 3),
        "calls": calls,
        "unsupported": sorted({c["call"] for c in calls if "error" in c}),
    }


# -- status --------------------------------------------------------------------------------


def _connect(address: str | None) -> None:
    import ray

    if address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
                pass
        except (OSError, ValueError) as exc:
            msg = f"no Ray cluster at {address} ({exc}); pass --address HOST:PORT of a running head"
            raise CliError(msg) from None
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:
        raise CliError(connect_error(address, exc)) from None


def connect_error(address: str | None, exc: BaseException) -> str:
    """What to tell the user when ``ray.init`` failed: a cluster that refused this client
    (token authentication, on by default for ``ray start`` in Ray 2.60) is not a missing one."""
    where = address or "auto (RAY_ADDRESS or a local cluster)"
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    from ray_ft import raycompat

    if raycompat.is_authentication_error(exc):
        return (
            f"the Ray cluster at {where} refused this client: authentication ({first}); "
            "set RAY_AUTH_MODE=token and make the cluster's token available (RAY_AUTH_TOKEN, "
            "or the file ~/.ray/auth_token copied from the head), then run this again"
        )
    return f"no Ray cluster at {where}: {first}; start one or pass --address"


def _cmd_status(args: argparse.Namespace) -> int:
    status, alive = _fetch_status(args)
    status["last_checkpoint"] = _last_checkpoint(Path(args.checkpoint_dir))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    _print_status(status, alive)
    return 0


def _cmd_why(args: argparse.Namespace) -> int:
    from ray_ft.tools.explain import explain, find_node

    status, alive = _fetch_status(args)
    try:
        node_id = find_node(status["nodes"], args.node)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    ray_view = "alive" if alive.get(node_id, {}).get("Alive") else "gone"
    print(explain(node_id, status["nodes"][node_id]) + f"\n  Ray: {ray_view}")
    return 0


def _fetch_status(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manager's status and Ray's node table, from the cluster at ``args.address``."""
    import ray

    from ray_ft.actors.manager_actor import DEFAULT_NAME, DEFAULT_NAMESPACE

    _connect(args.address)
    try:
        try:
            manager = ray.get_actor(args.name or DEFAULT_NAME, namespace=DEFAULT_NAMESPACE)
        except ValueError:
            msg = (
                "no ray_ft manager on this cluster yet; it starts with the first "
                "FaultTolerantExecutor or get_manager()"
            )
            raise CliError(msg) from None
        answer: Any = ray.get(manager.status.remote(), timeout=30)
        status: dict[str, Any] = answer
        alive = {n["NodeID"]: n for n in ray.nodes()}
    finally:
        ray.shutdown()
    return status, alive


def _last_checkpoint(root: Path) -> dict[str, Any] | None:
    from ray_ft.checkpoints.disk import DiskCheckpointStore

    if not root.is_dir():
        return None
    newest: dict[str, Any] | None = None
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if folder.name.startswith(("_", ".", "run-")):
            continue
        for info in DiskCheckpointStore(folder, keep_last=None).list()[-1:]:
            if newest is None or info.created_at > newest["created_at"]:
                newest = {"path": info.path, "step": info.step, "created_at": info.created_at}
    return newest


def _print_status(status: dict[str, Any], ray_nodes: dict[str, Any]) -> None:
    print(
        f"{'node':<12} {'ray':<5} {'status':<8} {'severity':<8} {'breaker':<9} "
        f"{'rtt ms':>7} {'fails':>5}  reasons"
    )
    for node_id, node in status["nodes"].items():
        ray_alive = "alive" if ray_nodes.get(node_id, {}).get("Alive") else "dead"
        shown = node.get("drain") or node["status"]  # drained: left on notice, not failed
        latency = node.get("latency_ms")
        rtt = "-" if latency is None else f"{latency:.1f}"
        reasons = list(node.get("reasons") or node.get("health_reasons") or [])
        if node.get("probe_misses"):
            reasons.append(f"{node['probe_misses']} health check(s) missed")
        print(
            f"{node_id[:12]:<12} {ray_alive:<5} {shown:<8} "
            f"{node.get('severity', 'ok'):<8} {node['breaker']:<9} {rtt:>7} "
            f"{len(node['recent_failures']):>5}  {'; '.join(reasons) or 'ok'}"
        )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status["failure_counts"].items()))
    print(f"failures: {status['failures_total']} ({counts or 'none'})")
    print(
        f"breaker transitions: {len(status['breaker_transitions'])}; "
        f"excluded now: {len(status['excluded'])}; probe rounds: {status['probe_rounds']}"
    )
    if status.get("degraded"):
        mass = status.get("mass_degraded")
        shared = f"; most nodes at once: {mass}" if mass else ""
        print(f"degraded now: {len(status['degraded'])} (placed last, still taking work){shared}")
    release = status.get("ray")
    if release:
        lo, hi = (".".join(map(str, v)) for v in _supported())
        tested = release.get("problem") or f"tested on {lo} to {hi}"
        without = ", ".join(release.get("without") or []) or "nothing"
        where = "docs/clusters.md, Ray releases"
        print(f"Ray {release['version']}: {tested}; without: {without} ({where})")
    ckpt = status.get("last_checkpoint")
    if ckpt:
        age = time.time() - ckpt["created_at"]
        print(f"last checkpoint: step {ckpt['step']} at {ckpt['path']} ({age:.0f} s ago)")
    else:
        print("last checkpoint: none found")


def _supported() -> tuple[tuple[int, int], tuple[int, int]]:
    from ray_ft.raycompat import SUPPORTED

    return SUPPORTED


# -- checkpoints ---------------------------------------------------------------------------


def _store(path: str, run: str | None = None) -> Any:
    from ray_ft.checkpoints.disk import DiskCheckpointStore

    if "://" not in path and not Path(path).is_dir():
        msg = f"no checkpoint folder at {path}; pass the folder given to DiskCheckpointStore"
        raise CliError(msg)
    store = DiskCheckpointStore(path, keep_last=None)
    if run is not None:
        if run not in {r.run_id for r in store.runs()}:
            known = ", ".join(r.run_id for r in store.runs()) or "none"
            raise CliError(f"no run {run!r} in {path}; its runs: {known}")
        store = store.for_run(run)
    return store


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    store = _store(args.path, args.run)
    if args.action == "list":
        runs = [r for r in store.runs() if args.run in (None, r.run_id)]
        if not runs:
            print(f"no checkpoints in {args.path}")
        for run in runs:
            print(run.summary())
            for info in store.for_run(run.run_id).list():
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
                print(
                    f"  step {info.step:>6}  {created}  {info.size_bytes:>12,} bytes  {info.path}"
                )
        return 0
    if args.action == "verify":
        bad = 0
        for info in store.list():
            problem = store.for_run(info.run_id).verify(info.step)
            verdict = "ok" if problem is None else "CORRUPT: " + problem
            print(f"run {info.run_id}  step {info.step:>6}  {verdict}")
            bad += problem is not None
        return 1 if bad else 0
    return _show(store, args)


def _show(store: Any, args: argparse.Namespace) -> int:
    from ray_ft.checkpoints.base import CheckpointCorruptError

    try:
        state = store.load(args.step) if args.step is not None else store.load_latest()
    except CheckpointCorruptError as exc:
        raise CliError(str(exc)) from None
    if state is None:
        raise CliError(f"no valid checkpoint in {args.path}")
    if not isinstance(state, dict):
        print(repr(state)[:2000])
        return 0
    history = state.get("history") or []
    summary = {
        "generation": state.get("generation"),
        "format_version": state.get("format_version"),
        "evaluations": state.get("evaluations"),
        "population": len(state.get("population") or []),
        "best_fitness": history[-1] if history else None,
        "failed_evaluations": len(state.get("failed_evaluations") or []),
        "failures": state.get("failures"),
        "optimizer": (state.get("optimizer_state") or {}).get("kind"),
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


# -- demo ----------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from ray_ft.tools.demo import DemoOptions, run_demo

    if args.generations < 1 or args.population < 4 or args.nodes < 2 or not args.eval_ms > 0:
        raise CliError("pass --generations >= 1, --population >= 4, --nodes >= 2 and --eval-ms > 0")
    opts = DemoOptions(
        generations=args.generations,
        population=args.population,
        nodes=args.nodes,
        seed=args.seed,
        eval_ms=args.eval_ms,
        resume=args.resume,
        verify=args.verify,
        chaos=not args.no_chaos,
        checkpoint_dir=args.checkpoint_dir,
    )
    return run_demo(opts, quiet_ray=args.verbose == 0)


# -- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="ray-ft", description="Fault tolerance for Ray.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="an optimization that survives injected faults")
    demo.add_argument("--generations", type=int, default=40)
    demo.add_argument("--population", type=int, default=32)
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--eval-ms",
        type=float,
        default=20.0,
        help="CPU time of one evaluation, calibrated on this machine (default 20)",
    )
    demo.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    demo.add_argument(
        "--verify", action="store_true", help="compare with a fault-free reference run"
    )
    demo.add_argument("--no-chaos", action="store_true", help="inject no faults")
    demo.add_argument("--checkpoint-dir", default=os.path.join("checkpoints", "demo"))
    demo.set_defaults(func=_cmd_demo)

    status = sub.add_parser("status", help="nodes, breakers, health and failures")
    status.add_argument("--address", default=None, help="HOST:PORT of the head (default auto)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--name", default=None, help="manager actor name")
    status.add_argument("--checkpoint-dir", default="checkpoints")
    status.set_defaults(func=_cmd_status)

    why = sub.add_parser("why", help="why a node is excluded: its verdict and the events")
    why.add_argument("node", help="the node id, or the first characters of it")
    why.add_argument("--address", default=None, help="HOST:PORT of the head (default auto)")
    why.add_argument("--name", default=None, help="manager actor name")
    why.set_defaults(func=_cmd_why)

    ckpt = sub.add_parser("checkpoints", help="list, verify or show checkpoints")
    ckpt.add_argument("action", choices=["list", "verify", "show"])
    ckpt.add_argument("path", help="a checkpoint folder (DiskCheckpointStore root)")
    ckpt.add_argument("--step", type=int, default=None, help="for show: this step")
    ckpt.add_argument("--run", default=None, help="only this run (default: every run)")
    ckpt.set_defaults(func=_cmd_checkpoints)

    probe = sub.add_parser("probe", help="this machine's health report, GPUs included")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.add_argument(
        "--raw",
        action="store_true",
        help="with --json: every raw NVML call with its value or exception class and latency",
    )
    probe.add_argument(
        "--expect-gpus",
        type=int,
        default=None,
        help="GPUs this node should have (default: what Ray would count, via CUDA_VISIBLE_DEVICES "
        "or NVML)",
    )
    probe.set_defaults(func=_cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR - 10 * min(args.verbose, 3)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"ray-ft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ray-ft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
