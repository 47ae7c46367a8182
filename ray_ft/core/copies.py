"""Copies: second attempts of running calls on other nodes, the first result wins (pure).

Two reasons for one: a straggler (an attempt running far past its cohort's runtimes,
``ray_ft.core.speculation``) gets a backup, and an attempt that would outlive its
draining node's deadline (a preemption notice) gets a copy. Either goes in a free slot
of another usable node only, within ``max_in_flight``; the scheduler cancels the loser.
"""

from __future__ import annotations

from ray_ft.core.commands import Command
from ray_ft.core.state import SchedulerState

__all__ = ["Copies"]


class Copies:
    """Decides the copies of one scheduler's running attempts; starts them in its state."""

    __slots__ = ("state",)

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def for_draining(self, now: float) -> list[Command]:
        """A copy, in a free slot elsewhere, of each attempt that would still run when its
        draining node goes (the first result wins, as for a straggler's backup)."""
        st = self.state
        out: list[Command] = []
        for node_id in list(st.draining.deadlines):
            for attempt in st.inflight.on_node(node_id):
                work = attempt.work
                if attempt.group is not None or attempt.backup or st.copied(attempt):
                    continue
                pace = st.table.paces.get(node_id, work.kind)
                if not st.draining.outlives(node_id, attempt.launched_at, pace, now):
                    continue
                if st.max_in_flight is not None and len(st.inflight) >= st.max_in_flight:
                    return out
                target = st.placement.backup_node(work, node_id, float("inf"))
                if target is None:
                    continue
                out.append(st.start_copy(work, target, now, "preemption_copies"))
        return out

    def for_stragglers(self, now: float) -> list[Command]:
        """One backup on another node, in a free slot, for each straggling attempt."""
        st = self.state
        out: list[Command] = []
        for attempt in st.inflight.candidates():  # first attempts that may get a backup
            work = attempt.work
            if attempt.group is not None:
                continue  # a batched member is short by construction: its batch has a timeout
            if not work.speculate or work.speculated or attempt.trial or work.cohort is None:
                continue
            threshold = work.cohort.threshold(st.config)
            if threshold is None or now - attempt.launched_at <= threshold:
                continue
            if st.queues.get(work.shape):
                continue  # first attempts come first
            if st.max_in_flight is not None and len(st.inflight) >= st.max_in_flight:
                break
            if st.stragglers.budget(st.table.free_slots(work.shape), st.backups) <= 0:
                break
            node_id = st.placement.backup_node(work, attempt.node_id, threshold)
            if node_id is None:
                continue
            out.append(st.start_copy(work, node_id, now, "speculated"))
        return out
