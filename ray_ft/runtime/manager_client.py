"""How an executor talks to the fault-tolerance state: a remote actor or an in-process one.

Both clients give the executor the same non-blocking calls: a cached exclusion snapshot
that refreshes in the background, batched failure reports, and trial slots for HALF_OPEN
nodes. The fast path (no failures) costs one remote call per refresh, not per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import ray

from ray_ft.core.commands import Exclusions
from ray_ft.failures import FailureEvent
from ray_ft.manager.snapshots import apply_delta
from ray_ft.manager.state import FaultToleranceManager

__all__ = ["ActorManagerClient", "Exclusions", "LocalManagerClient", "ManagerClient"]

log = logging.getLogger(__name__)

_CHECK_S = 0.05


class ManagerClient(Protocol):
    """What the executor needs from the manager."""

    def poll(self) -> Exclusions | None:
        """A newer snapshot when one has arrived, else None; never blocks."""
        ...

    def fetch(self, timeout: float) -> Exclusions | None:
        """The snapshot now, waiting up to ``timeout``; None when there is no answer."""
        ...

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Send failure events (batched by the caller); never blocks for long."""
        ...

    def request_trial(self, node_id: str) -> None:
        """Ask for a trial lease on a HALF_OPEN node; the answer comes from trial_answers."""
        ...

    def trial_answers(self) -> list[tuple[str, bool]]:
        """Answers to lease requests that have arrived (node, granted); never blocks."""
        ...

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Tell the outcome of a trial."""
        ...


class LocalManagerClient:
    """An in-process FaultToleranceManager (no actor): breakers local to one executor."""

    def __init__(self, manager: FaultToleranceManager) -> None:
        self.manager = manager
        self._last: Exclusions | None = None
        self._answers: list[tuple[str, bool]] = []

    def poll(self) -> Exclusions | None:
        """Recompute the snapshot; None when nothing changed."""
        snap = Exclusions.from_dict(self.manager.exclusions_snapshot())
        if snap == self._last and not snap.half_open:
            return None
        self._last = snap
        return snap

    def fetch(self, timeout: float) -> Exclusions | None:
        """The snapshot now."""
        self._last = Exclusions.from_dict(self.manager.exclusions_snapshot())
        return self._last

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Charge node-blamed failures to the local breakers (this manager is not the
        executor's retry bookkeeping, so each failure is counted once)."""
        for event in events:
            self.manager.report_failure(event)

    def request_trial(self, node_id: str) -> None:
        """Take a trial slot from the local breaker at once."""
        self._answers.append((node_id, self.manager.acquire_trial(node_id)))

    def trial_answers(self) -> list[tuple[str, bool]]:
        """The answers given since the last call."""
        answers, self._answers = self._answers, []
        return answers

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Close or reopen the local breaker."""
        self.manager.record_trial(node_id, success, failure)


class ActorManagerClient:
    """The detached manager actor; snapshots are fetched asynchronously every ``refresh_s``."""

    def __init__(
        self,
        handle: Any,
        *,
        refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handle = handle
        self.refresh_s = refresh_s
        self._clock = clock
        self._inflight: Any = None
        self._asked_at = -float("inf")
        self._checked_at = -float("inf")
        self._last: Exclusions | None = None
        self._unsent: list[FailureEvent] = []
        self._trial_refs: dict[Any, str] = {}
        self._token: str | None = None  # the snapshot version we hold
        self._whole: dict[str, Any] = {}  # that snapshot, as sent (deltas apply to it)
        self.reachable = True

    def _unreachable(self, what: str, exc: BaseException) -> None:
        """Say once, at WARNING, that the manager stopped answering (health checking and
        exclusions are paused: the last snapshot stays in force)."""
        if self.reachable:
            self.reachable = False
            log.warning(
                "the ray_ft manager is unreachable (%s: %s); node exclusions stay as last "
                "seen until it answers again",
                what,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
        else:
            log.debug("manager %s failed: %s", what, exc)

    def _answered(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.warning("the ray_ft manager answers again; node exclusions are followed again")

    def poll(self) -> Exclusions | None:
        """Collect a finished snapshot request (None if unchanged); start the next when due.

        Looks at the pending request at most every 50 ms, so a busy monitor loop does not
        pay a ray.wait per round.
        """
        now = self._clock()
        if now - self._checked_at < _CHECK_S:
            return None
        self._checked_at = now
        result = None
        if self._inflight is not None:
            ready, _ = ray.wait([self._inflight], timeout=0)
            if ready:
                try:
                    answer = ray.get(ready[0])
                    self._answered()
                    if answer is None:  # our token is current: nothing changed
                        self._inflight = None
                        if now - self._asked_at >= self.refresh_s:
                            self._ask(now)
                        return self._last if self._last and self._last.half_open else None
                    whole = self._merge(answer)
                    snapshot = Exclusions.from_dict(whole) if whole else self._last
                    if snapshot is None:
                        self._inflight = None
                        return None
                    # unchanged snapshots are skipped, except while a node awaits a trial
                    if snapshot != self._last or snapshot.half_open:
                        result = self._last = snapshot
                except Exception as exc:  # restarting actor: keep the last snapshot
                    self._unreachable("snapshot", exc)
                self._inflight = None
        if self._inflight is None and now - self._asked_at >= self.refresh_s:
            self._ask(now)
        return result

    def _ask(self, now: float) -> None:
        self._asked_at = now
        try:
            self._inflight = self.handle.excluded_nodes.remote(self._token)
        except Exception as exc:  # the handle itself is broken: say so, try again later
            self._inflight = None
            self._unreachable("snapshot request", exc)

    def fetch(self, timeout: float) -> Exclusions | None:
        """The snapshot now, waiting up to ``timeout`` (an executor's first look); None
        when the manager does not answer in time (the async poll takes over)."""
        try:
            self._token = None  # the whole snapshot, whatever we held
            answer = self._merge(ray.get(self.handle.excluded_nodes.remote(), timeout=timeout))
            snapshot = Exclusions.from_dict(answer or {})
        except Exception as exc:
            self._unreachable("first snapshot", exc)
            return None
        self._answered()
        self._last = snapshot
        self._asked_at = self._checked_at = self._clock()
        return snapshot

    def _merge(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """The whole snapshot an answer stands for (a delta applies to the one we hold);
        None for a delta computed from another version: the next request asks afresh."""
        try:
            whole = apply_delta(self._whole, answer)
        except ValueError:
            self._token = None
            return None
        self._whole, self._token = whole, whole.get("token")
        return whole

    def report(self, events: Sequence[FailureEvent]) -> None:
        """Fire and forget; the actor retries the call across its own restarts."""
        batch = [*self._unsent, *events]
        self._unsent = []
        if not batch:
            return
        try:
            self.handle.report_failures.remote(batch)
        except Exception as exc:
            log.warning("could not report %d failures to the manager: %s", len(batch), exc)
            self._unsent = batch[-10_000:]
        self._asked_at = self._checked_at = -float("inf")  # exclusions may change: refresh

    def request_trial(self, node_id: str) -> None:
        """Send the request; a restarting manager delays the answer, never the caller."""
        self._trial_refs[self.handle.acquire_trial.remote(node_id)] = node_id

    def trial_answers(self) -> list[tuple[str, bool]]:
        """Answers that have arrived; a failed request counts as refused."""
        if not self._trial_refs:
            return []
        ready, _ = ray.wait(list(self._trial_refs), num_returns=len(self._trial_refs), timeout=0)
        answers = []
        for ref in ready:
            node_id = self._trial_refs.pop(ref)
            try:
                answers.append((node_id, bool(ray.get(ref))))
            except Exception as exc:
                self._unreachable(f"acquire_trial({node_id})", exc)
                answers.append((node_id, False))
        return answers

    def report_trial(self, node_id: str, success: bool, failure: FailureEvent | None) -> None:
        """Fire and forget."""
        self.handle.report_trial.remote(node_id, success, failure)
        self._asked_at = self._checked_at = -float("inf")
