"""Stragglers: which running attempts deserve a speculative backup (pure: no Ray, no clock).

A batch is the calls of one callable submitted since that callable last had nothing
outstanding: one generation of an optimizer, one ``map``; a steady stream is one long
batch whose recent runtimes (the last ``_WINDOW``) set its pace. Once
``speculation_quantile`` of a batch has finished, an attempt running longer than
``speculation_multiplier`` x the median runtime (and ``speculation_min_runtime``) is a
straggler. Anchors: Spark speculation, MapReduce backup tasks, hedged requests.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque

from ray_ft.config import FTConfig

__all__ = ["Batch", "Stragglers"]

_WINDOW = 100  # recent successful runtimes a batch's median is taken over


@dataclasses.dataclass(slots=True, eq=False)
class Batch:
    """Calls of one callable submitted together, and how fast the finished ones ran."""

    submitted: int = 0
    finished: int = 0
    runtimes: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=_WINDOW))

    def threshold(self, config: FTConfig) -> float | None:
        """Seconds after which an attempt of this batch straggles; None: too early to say."""
        if not self.runtimes or self.finished < config.speculation_quantile * self.submitted:
            return None
        median = statistics.median(self.runtimes)
        return max(config.speculation_multiplier * median, config.speculation_min_runtime)


class Stragglers:
    """Batches per callable; the scheduler asks it who straggles and how many backups fit."""

    def __init__(self, config: FTConfig) -> None:
        self.config = config
        self._batches: dict[str, Batch] = {}
        self._outstanding: dict[str, int] = {}

    def submitted(self, name: str) -> Batch:
        """A call of ``name`` was submitted: it joins the open batch or starts a new one."""
        if not self._outstanding.get(name):
            self._batches[name] = Batch()
        batch = self._batches[name]
        batch.submitted += 1
        self._outstanding[name] = self._outstanding.get(name, 0) + 1
        return batch

    def finished(self, name: str, batch: Batch, runtime: float | None) -> None:
        """A call ended (``runtime`` of the attempt that succeeded, None when it failed)."""
        batch.finished += 1
        if runtime is not None:
            batch.runtimes.append(runtime)
        left = self._outstanding.get(name, 0) - 1
        if left > 0:
            self._outstanding[name] = left
        else:
            self._outstanding.pop(name, None)
            if self._batches.get(name) is batch:
                del self._batches[name]

    def budget(self, free_slots: int, backups_running: int) -> int:
        """How many more backups may start: ``speculation_max_fraction`` of the slots that
        are free or hold backups, at least one."""
        share = self.config.speculation_max_fraction * (free_slots + backups_running)
        return max(1, math.ceil(share)) - backups_running
