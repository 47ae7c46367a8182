"""Out-of-memory retries ask for more memory (pure: no Ray).

An attempt killed for memory is retried asking ``oom_memory_multiplier`` x what it had
(its request, or its share of the node it ran on), capped at the largest node that can
run it; later calls of the same callable ask for that much from the start (evaluations
of one objective need about the same). Remembered for the last ``_KEEP`` callables.
"""

from __future__ import annotations

from collections import OrderedDict

from ray_ft.config import FTConfig
from ray_ft.core.nodes import NodeTable
from ray_ft.core.work import CallSpec, Work

__all__ = ["MemoryPolicy"]

_KEEP = 256  # callables whose raised memory is remembered (least recently raised dropped)


class MemoryPolicy:
    """Memory each callable that ran out of it is given now."""

    def __init__(self, config: FTConfig, table: NodeTable) -> None:
        self.config = config
        self.table = table
        self._hungry: OrderedDict[str, int] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._hungry)

    def raised(self) -> dict[str, int]:
        """Memory given per callable name (``stats()["memory_raised"]``)."""
        return {kind.split("#", 1)[0]: amount for kind, amount in self._hungry.items()}

    def more_memory(self, work: Work, node_id: str) -> CallSpec:
        """The spec of an out-of-memory retry of ``work``, which ran on ``node_id``."""
        asked = float(work.spec.options.get("memory") or 0)
        had = asked
        if not had:
            node = self.table.nodes.get(node_id, {})
            sharing = max(1, min(work.shape.slots_on(node), int(node.get("CPU", 1) or 1)))
            had = node.get("memory", 0.0) / sharing
        wanted = int(min(had * self.config.oom_memory_multiplier, self.table.memory_cap(work)))
        if wanted <= asked:
            return work.spec
        self._hungry[work.kind] = max(self._hungry.pop(work.kind, 0), wanted)
        if len(self._hungry) > _KEEP:
            self._hungry.popitem(last=False)
        return work.spec.with_memory(wanted)

    def feed(self, work: Work) -> bool:
        """Give a call of a callable that ran out of memory the memory its retries got;
        True when its request changed."""
        hungry = self._hungry.get(work.kind)
        if not hungry:
            return False
        wanted = min(hungry, int(self.table.memory_cap(work)))
        if float(work.spec.options.get("memory") or 0) >= wanted:
            return False
        work.spec = work.spec.with_memory(wanted)
        return True
