"""``ray-ft why NODE``: one node's story from the manager's status, in plain words.

Why a node is excluded (or degraded, draining, dead), from what the manager already keeps
per node and bounds: its verdict and reasons, its health and heartbeat figures, its
breaker's recent transitions and its recent failures with whom each was charged to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["explain", "find_node"]


def find_node(nodes: Mapping[str, Any], prefix: str) -> str:
    """The one node id that starts with ``prefix``; ValueError naming the candidates."""
    matches = sorted(n for n in nodes if n.startswith(prefix))
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(n[:12] for n in sorted(nodes)) or "none"
    if not matches:
        msg = f"no node id starts with {prefix!r}; the manager knows: {known}"
    else:
        msg = f"{prefix!r} names {len(matches)} nodes; pass more of the id: {known}"
    raise ValueError(msg)


def _when(at: float | None, now: float) -> str:
    return "?" if at is None else f"{max(0.0, now - at):.0f} s ago"


def explain(node_id: str, node: Mapping[str, Any], *, now: float | None = None) -> str:
    """The node's verdict and the events behind it, newest last."""
    now = time.time() if now is None else now
    drain = node.get("drain")
    shown = drain or node.get("status", "?")
    lines = [f"node {node_id}: {shown}, breaker {node.get('breaker', '?')}"]
    if drain == "draining":
        lines.append("  why: a drain notice stands (a preemption or a scale-down): no new work")
    elif drain == "drained":
        lines.append("  why: it left on notice (preempted or scaled down): nobody's fault")
    elif node.get("reasons"):
        lines.extend(f"  why: {reason}" for reason in node["reasons"])
    elif node.get("breaker") in ("OPEN", "HALF_OPEN"):
        lines.append("  why: its breaker is not closed (failures charged to it, below)")
    else:
        lines.append("  why: nothing stands against it")
    health = f"  health: {node.get('severity', 'ok')}"
    if node.get("health_reasons"):
        health += " (" + "; ".join(node["health_reasons"]) + ")"
    if node.get("probe_misses"):
        health += f"; {node['probe_misses']} health check(s) missed"
    lines.append(health)
    if node.get("heartbeat_silence_s") is not None:
        lines.append(
            f"  heartbeats: silent {node['heartbeat_silence_s']:.1f} s, phi {node.get('phi')}, "
            f"round trip {node.get('latency_ms')} ms"
        )
    elif not node.get("has_probe"):
        lines.append("  heartbeats: no probe on it (yet): never evidence against it")
    moves = node.get("transitions") or []
    lines.append(f"  breaker transitions: {len(moves) or 'none'}")
    lines.extend(f"    {_when(m.get('at'), now)}: {m.get('from')} -> {m.get('to')}" for m in moves)
    failures = node.get("recent_failures") or []
    lines.append(f"  recent failures: {len(failures) or 'none'}")
    for event in failures:
        blame = event.get("blame") or "node"
        detail = (event.get("details") or "").splitlines()[:1]
        lines.append(
            f"    {_when(event.get('timestamp'), now)}: {event.get('failure_type')} "
            f"(charged to: {blame}; task {event.get('task_id') or '-'})"
            + (f" {detail[0][:80]}" if detail else "")
        )
    return "\n".join(lines)
