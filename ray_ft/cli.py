"""The ``ray-ft`` command: demo, status, checkpoints, probe."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

log = logging.getLogger("ray_ft.cli")


class CliError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def _cmd_probe(args: argparse.Namespace) -> int:
    from ray_ft.health import HealthMonitor

    monitor = HealthMonitor()
    health = monitor.get_system_health()
    report = monitor.check(health)
    if args.json:
        print(
            json.dumps(
                {"health": health, "healthy": report.healthy, "reasons": list(report.reasons)},
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"healthy: {'yes' if report.healthy else 'NO'}")
    for reason in report.reasons:
        print(f"  - {reason}")
    print(
        f"cpu {health['cpu_percent']:.1f}%  memory {health['memory_percent']:.1f}% "
        f"({health['memory_available_gb']:.1f} GB free)  disk {health['disk_percent']:.1f}% "
        f"({health['disk_free_gb']:.1f} GB free)"
    )
    gpus = health["gpus"]
    if not gpus:
        print("gpus: none")
    for gpu in gpus:
        print(
            f"gpu {gpu.get('id')}: {gpu.get('name') or ''} load={gpu.get('load')} "
            f"mem={gpu.get('memory_used')}/{gpu.get('memory_total')} MB "
            f"temp={gpu.get('temperature')} C"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="ray-ft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe", help="this machine's health report, GPUs included")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=_cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
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
