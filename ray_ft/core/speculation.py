"""Stragglers: which running attempts deserve a speculative backup (pure: no Ray, no clock).

A cohort is the calls of one callable submitted since that callable last had nothing
outstanding: one generation of an optimizer, one ``map``; a steady stream is one long
cohort whose recent runtimes (the last ``_WINDOW``) set its pace. Once
``speculation_quantile`` of a cohort has finished, an attempt running longer than
``speculation_multiplier`` x the median runtime (and ``speculation_min_runtime``) is a
straggler. Anchors: Spark speculation, MapReduce backup tasks, hedged requests.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque

from ray_ft.config import FTConfig

__all__ = ["Cohort", "Stragglers"]

_WINDOW = 100  # recent successful runtimes a cohort's median is taken over


@dataclasses.dataclass(slots=True, eq=False)
class Cohort:
    """Calls of one callable submitted together, and how fast the finished ones ran."""

    submitted: int = 0
    finished: int = 0
    runtimes: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=_WINDOW))

    def threshold(self, config: FTConfig) -> float | None:
        """Seconds after which an attempt of this cohort straggles; None: too early to say."""
        if not self.runtimes or self.finished < config.speculation_quantile * self.submitted:
            return None
        median = statistics.median(self.runtimes)
        return max(config.speculation_multiplier * median, config.speculation_min_runtime)


class Stragglers:
    """Cohorts per callable; the scheduler asks it who straggles and how many backups fit."""

    def __init__(self, config: FTConfig) -> None:
        self.config = config
        self._cohorts: dict[str, Cohort] = {}
        self._outstanding: dict[str, int] = {}

    def submitted(self, name: str) -> Cohort:
        """A call of ``name`` was submitted: it joins the open cohort or starts a new one."""
        if not self._outstanding.get(name):
            self._cohorts[name] = Cohort()
        cohort = self._cohorts[name]
        cohort.submitted += 1
        self._outstanding[name] = self._outstanding.get(name, 0) + 1
        return cohort

    def finished(self, name: str, cohort: Cohort, runtime: float | None) -> None:
        """A call ended (``runtime`` of the attempt that succeeded, None when it failed)."""
        cohort.finished += 1
        if runtime is not None:
            cohort.runtimes.append(runtime)
        left = self._outstanding.get(name, 0) - 1
        if left > 0:
            self._outstanding[name] = left
        else:
            self._outstanding.pop(name, None)
            if self._cohorts.get(name) is cohort:
                del self._cohorts[name]

    def budget(self, free_slots: int, backups_running: int) -> int:
        """How many more backups may start: ``speculation_max_fraction`` of the slots that
        are free or hold backups, at least one."""
        share = self.config.speculation_max_fraction * (free_slots + backups_running)
        return max(1, math.ceil(share)) - backups_running
