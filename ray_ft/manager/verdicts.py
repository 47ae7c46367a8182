"""NodeVerdicts: what the probes last said of each node, its health and its heartbeats (pure).

A node's status (ALIVE, DEGRADED, FAILED) follows from these two verdicts; DEAD comes
from Ray and is the manager's. Only nodes with something to say are kept: a healthy,
answering node has no entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray_ft.failures import Severity
from ray_ft.manager.records import WorkerStatus

__all__ = ["NodeVerdicts"]


class NodeVerdicts:
    """Health verdicts (severity and findings) and heartbeat verdicts by node."""

    __slots__ = ("liveness", "reasons", "severity")

    def __init__(self) -> None:
        self.reasons: dict[str, list[str]] = {}  #: node -> its probe's findings
        self.severity: dict[str, Severity] = {}  #: node -> degraded or fatal (ok: absent)
        self.liveness: dict[str, str] = {}  #: node -> why it looks failed (answering: absent)

    def set_health(self, node: str, severity: Severity, reasons: list[str]) -> None:
        if severity == Severity.OK:
            self.severity.pop(node, None)
            self.reasons.pop(node, None)
        else:
            self.severity[node] = severity
            self.reasons[node] = list(reasons)

    def set_answering(self, node: str) -> bool:
        """The node answers heartbeats; True when it had stopped."""
        return self.liveness.pop(node, None) is not None

    def set_silent(self, node: str, reason: str) -> None:
        self.liveness[node] = reason

    def silent(self, node: str) -> bool:
        return node in self.liveness

    def status(self, node: str) -> WorkerStatus:
        """FAILED when silent or fatal, DEGRADED when degraded, else ALIVE."""
        severity = self.severity.get(node)
        if node in self.liveness or severity == Severity.FATAL:
            return WorkerStatus.FAILED
        return WorkerStatus.DEGRADED if severity == Severity.DEGRADED else WorkerStatus.ALIVE

    def severity_of(self, node: str) -> str:
        """ "fatal" for a silent node, else its health severity ("ok" when none)."""
        return Severity.FATAL.value if node in self.liveness else self.severity.get(node, "ok")

    def why(self, node: str) -> list[str]:
        """Why the node is not ALIVE: its heartbeat verdict first, then its findings."""
        silent = [self.liveness[node]] if node in self.liveness else []
        return silent + self.reasons.get(node, [])

    def forget(self, node: str) -> None:
        self.reasons.pop(node, None)
        self.severity.pop(node, None)
        self.liveness.pop(node, None)

    def to_dict(self) -> dict[str, Any]:
        """The state file's section."""
        return {
            "health_reasons": dict(self.reasons),
            "health_severity": dict(self.severity),
            "liveness_failures": dict(self.liveness),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> NodeVerdicts:
        verdicts = cls()
        verdicts.reasons = {w: list(r) for w, r in state.get("health_reasons", {}).items()}
        verdicts.severity = {w: Severity(v) for w, v in state.get("health_severity", {}).items()}
        verdicts.liveness = dict(state.get("liveness_failures", {}))
        return verdicts
