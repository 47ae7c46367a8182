"""The executor's loop: the Ray side of the pure :class:`~ray_ft.core.scheduler.Scheduler`.

It carries out the scheduler's commands through a :class:`~ray_ft.runtime.workers.Workers`
backend (Ray tasks, or the pool's actors) and feeds back what Ray, the node table and the
manager say. The scheduler's ``inflight`` is the only table of attempts: an attempt's
ObjectRef rides on it (``Attempt.ref``, ``Group.ref`` for a batch), and the loop keeps only
the refs it waits on. An attempt is still wanted while the scheduler has it in flight.

The lock is held only to hand events to the scheduler and take its commands; every Ray
call (launch, wait, get, cancel, manager calls) and every future resolution happens outside
it. The thread sleeps until a completion, a submit, a timer or a deadline; an idle loop's
thread holds only a weak reference, so a dropped executor is collected, while one with
work in flight is kept alive (``BUSY``) until the work is done.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from ray_ft.config import FTConfig
from ray_ft.core.commands import (
    AcquireTrial,
    Cancel,
    Command,
    Launch,
    LaunchBatch,
    ReleaseTrial,
    Report,
    Resolve,
)
from ray_ft.core.events import (
    Aborted,
    BatchFailed,
    CancelQueued,
    Event,
    ExclusionsChanged,
    GaveUp,
    LaunchFailed,
    Submitted,
    Tick,
    TrialGranted,
    WentIdle,
    WorkerLost,
    WorkersBroken,
)
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import Attempt, Group, Work
from ray_ft.failures import FailureEvent, FailureType
from ray_ft.runtime.busy import BUSY, RAY_GONE, watch_for_ray_gone
from ray_ft.runtime.cluster_link import ElasticLink
from ray_ft.runtime.manager_client import ManagerClient
from ray_ft.runtime.results import attempt_done, batch_done
from ray_ft.runtime.workers import WorkerGoneError, Workers

__all__ = ["Loop"]

log = logging.getLogger(__name__)

_TICK_S = 0.05  # longest a busy loop goes without a full scheduler tick
_BUSY_WAIT_S = 0.1  # longest a busy loop waits before it picks up refs launched meanwhile


class Round(enum.StrEnum):
    """What one round of the loop left: work, nothing to do, or a loop shut down."""

    BUSY = "busy"
    IDLE = "idle"
    DONE = "done"


class Loop:
    """One executor's scheduler, its workers, its manager link and its thread."""

    def __init__(
        self,
        config: FTConfig,
        sched: Scheduler,
        workers: Workers,
        client: ManagerClient,
        link: ElasticLink | None,
        *,
        clock: Any,
        thread_name: str,
        ray_up: Callable[[], bool] = ray.is_initialized,
    ) -> None:
        self.config = config
        self.sched = sched
        self.workers = workers
        self.client = client
        self.lock = threading.Lock()
        self.kick = threading.Event()
        self.idle_now = threading.Event()  # set while nothing is queued or in flight
        self.idle_now.set()
        self.closed = False  # shut down: no new work
        self._link = link
        self._clock = clock
        self.ray_up = ray_up  # False once the user called ray.shutdown()
        self._waiting: dict[Any, Attempt | Group] = {}  # refs to wait on -> their attempt(s)
        self._demand: dict[Any, int] = {}
        self._nodes_at = -float("inf")
        self._ticked_at = -float("inf")
        self._given_up: deque[Work] = deque()  # see give_up
        weakref.finalize(self, self.kick.set)  # a dropped idle loop ends its thread
        weakref.finalize(self, workers.close)
        if link is not None:
            weakref.finalize(self, link.close)
        self.thread = threading.Thread(
            target=_run, args=(weakref.ref(self), self.kick), name=thread_name, daemon=True
        )

    # -- callers' threads ----------------------------------------------------------------

    def submit(self, works: list[Work], *, raise_for: Work | None) -> None:
        """Queue the calls and dispatch once; a refused launch of ``raise_for`` raises."""
        if not self.ray_up():  # a launch would start a new local Ray behind the user
            msg = (
                "Ray was shut down (ray.shutdown()) under this executor; create a new "
                "FaultTolerantExecutor after ray.init()"
            )
            raise RuntimeError(msg)
        polled = self.poll() if self.sched.idle else []  # an idle loop follows nothing
        with self.lock:
            if self.closed:
                msg = "cannot submit after shutdown(); create a new FaultTolerantExecutor"
                raise RuntimeError(msg)
            BUSY.add(self)  # kept alive until its work is done, even if the caller drops it
            watch_for_ray_gone()
            self.idle_now.clear()
            commands = self.feed(polled)
            commands.extend(self.sched.handle(Submitted(tuple(works))))
        self.execute(commands, raise_for=raise_for)
        self.kick.set()

    def give_up(self, works: list[Work]) -> None:
        """The caller will not take these calls' results: a queued call is cancelled here,
        a running one is stopped by the loop (this may run in a garbage collector's
        finalizer on any thread, so it takes no lock: the loop picks the calls up)."""
        running = [w for w in works if not w.future.cancel() and not w.future.done()]
        if running:
            self._given_up.extend(running)
            self.kick.set()

    def close(self, *, cancel_futures: bool) -> None:
        with self.lock:
            self.closed = True
            commands = self.sched.handle(CancelQueued()) if cancel_futures else []
        self.execute(commands)
        self.kick.set()

    def look(self) -> None:
        """Follow the workers and the manager now (an idle loop does not)."""
        self.apply(self.poll(force=True))

    def apply(self, polled: list[Event]) -> None:
        with self.lock:
            commands = self.feed(polled)
        self.execute(commands)

    # -- the thread ----------------------------------------------------------------------

    def ray_gone(self) -> None:
        """``ray.shutdown()`` under this executor: every call not done fails at once with
        an error that says so (plain Ray's ``ray.get`` raises too), and the loop ends. Only
        futures are resolved: any Ray call now (a cancel, a report) would start a new Ray."""
        with self.lock:
            self.closed = True
            works = {id(a.work) for a in self.sched.inflight.values()}
            pending = len(works) + self.sched.pending()
            error = RuntimeError(
                f"Ray was shut down (ray.shutdown()) while this executor had {pending} calls "
                "not done; their results are lost. Call executor.shutdown() before "
                "ray.shutdown(), and create a new FaultTolerantExecutor after ray.init()"
            )
            aborted = [Aborted(a, error) for a in list(self.sched.inflight.values())]
            commands = self.sched.handle(*aborted, WorkersBroken(error))
            # kept, with its ObjectRefs: one freed while Ray's core worker shuts down ends
            # the whole process, whichever thread frees it (runtime/busy.py)
            if self not in RAY_GONE:  # a Loop compares by identity
                RAY_GONE.append(self)
            BUSY.discard(self)
            self.idle_now.set()
        for command in commands:
            if isinstance(command, Resolve):
                _resolve(command)

    def step(self) -> Round:
        """One round; says whether work is left, none is, or the loop is shut down."""
        if not self.ray_up():
            self.ray_gone()
            return Round.DONE
        now = self._clock()
        polled = self.poll()
        commands: list[Command] = []
        try:
            with self.lock:
                commands = self.feed(polled)
                if self._given_up:
                    given_up = [self._given_up.popleft() for _ in range(len(self._given_up))]
                    commands.extend(self.sched.handle(GaveUp(tuple(given_up))))
                due = self.sched.next_wakeup()
                if commands or now - self._ticked_at >= _TICK_S or (due is not None and due <= now):
                    # completions and submits dispatch by themselves: a round ticks only when
                    # something is due, news came in, or every _TICK_S (stragglers, capacity)
                    self._ticked_at = now
                    commands.extend(self.sched.handle(Tick()))
                idle = self.sched.idle
                self._demand = self.sched.demand()
                refs = list(self._waiting)
                wakeup = self.sched.next_wakeup()
                if idle:
                    commands.extend(self.sched.handle(WentIdle()))
        finally:  # what was gathered is carried out even when a later step raised
            self.execute(commands)
        if idle:
            if self._link is not None:
                # nothing wanted any more: said at once; a view that came meanwhile is fed
                # in (its token is taken: dropped here, the scheduler would never get it)
                self.apply(self._link.step({}))
            with self.lock:  # a submit may have raced in: then it stays
                if self.sched.idle and not self._given_up:
                    BUSY.discard(self)
                    self.idle_now.set()
            return Round.DONE if self.closed else Round.IDLE
        timeout = _BUSY_WAIT_S if wakeup is None else max(0.0, min(_BUSY_WAIT_S, wakeup - now))
        if not refs:
            self.kick.wait(timeout)
            self.kick.clear()
            return Round.BUSY
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            self._collect(ready)
        return Round.BUSY

    def poll(self, *, force: bool = False) -> list[Event]:
        """Ray and manager calls, outside the lock; their results are fed in later."""
        if not self.ray_up():  # ray.shutdown() now: a Ray call would start a new Ray
            return []
        now = self._clock()
        due = force or now - self._nodes_at >= self.workers.refresh_s
        if due:
            self._nodes_at = now
        polled = self.workers.poll(due, self.sched.nodes)
        if self._link is not None:
            polled.extend(self._link.step(self._demand if self.workers.demands else {}))
        snapshot = self.client.poll()
        if snapshot is not None:
            polled.append(ExclusionsChanged(snapshot))
        polled.extend(TrialGranted(*answer) for answer in self.client.trial_answers())
        return self.workers.translate(polled)

    def feed(self, polled: list[Event]) -> list[Command]:
        """Hand polled news to the scheduler (under the lock)."""
        return self.sched.handle(*polled)

    # -- carrying out commands (never under the lock) -------------------------------------

    def execute(self, commands: list[Command], *, raise_for: Work | None = None) -> None:
        """Carry out every command, whatever one of them hits: a failing launch ends only
        its own call; a failing manager call is logged. When the launch of ``raise_for``
        (a call being submitted) failed, its error is raised to the submitter at the end."""
        reports: list[FailureEvent] = []
        resolves: list[Resolve] = []
        refused: BaseException | None = None
        while commands:
            follow_up: list[Command] = []
            for command in commands:
                try:
                    if isinstance(command, Launch):
                        more, error = self._launch(command.attempt)
                        follow_up.extend(more)
                        if error is not None and command.attempt.work is raise_for:
                            refused = error
                    elif isinstance(command, LaunchBatch):
                        follow_up.extend(self._launch_batch(command.attempts))
                    elif isinstance(command, Resolve):
                        resolves.append(command)
                    elif isinstance(command, Cancel):
                        self._cancel(command.attempt)
                    elif isinstance(command, Report):
                        reports.extend(command.events)
                    elif isinstance(command, AcquireTrial):
                        follow_up.extend(self._request_trial(command.node_id))
                    elif isinstance(command, ReleaseTrial):
                        self.client.report_trial(command.node_id, command.success, command.event)
                except Exception:  # one command's trouble must not cost the others
                    log.exception("ray_ft could not carry out %s", type(command).__name__)
            commands = follow_up
        if reports:
            try:
                self.client.report(self.workers.node_events(reports))
            except Exception as exc:
                log.warning("could not report %d failures to the manager: %s", len(reports), exc)
        for resolve in resolves:
            _resolve(resolve)
        if refused is not None and raise_for is not None:
            future = raise_for.future
            raise (future.exception(0) if future.done() else None) or refused from refused

    def _request_trial(self, node_id: str) -> list[Command]:
        """Ask the manager for a trial lease; a request that cannot be sent is refused."""
        try:
            self.client.request_trial(node_id)
        except Exception as exc:
            log.warning("could not ask the manager for a trial on %s: %s", node_id, exc)
            with self.lock:
                return self.sched.handle(TrialGranted(node_id, False))
        return []

    def _launch(self, attempt: Attempt) -> tuple[list[Command], BaseException | None]:
        """Hand one attempt to its worker; a refused launch fails that call alone."""
        try:
            ref = self.workers.start(attempt.work, attempt.node_id)
            hash(ref)  # a list of refs (num_returns != 1) is refused here, not later
        except WorkerGoneError as exc:
            with self.lock:
                return self.sched.handle(WorkerLost(attempt.node_id, str(exc))), None
        except Exception as exc:
            with self.lock:
                return self.sched.handle(LaunchFailed(attempt.attempt_id, exc)), exc
        with self.lock:
            wanted = self.sched.inflight.get(attempt.attempt_id) is attempt
            if wanted:
                attempt.ref = ref
                self._waiting[ref] = attempt
        if not wanted:  # cancelled while its launch was under way
            self._stop(ref, attempt)
        return [], None

    def _launch_batch(self, attempts: tuple[Attempt, ...]) -> list[Command]:
        """Hand a batch to Ray as one task; if Ray refuses it, its members are split."""
        group = attempts[0].group
        assert group is not None
        try:
            ref = self.workers.start_batch(attempts)
        except Exception as exc:
            with self.lock:
                ids = [a.attempt_id for a in attempts]
                return self.sched.handle(
                    BatchFailed(tuple(ids), exc, FailureType.APPLICATION_ERROR, launch=True)
                )
        with self.lock:
            wanted = group.live > 0
            if wanted:
                group.ref = ref
                self._waiting[ref] = group
        if not wanted:  # every member was cancelled while the launch was under way
            self._stop(ref, attempts[0])
        return []

    def _cancel(self, attempt: Attempt) -> None:
        """Stop a dropped attempt; a batch's task only once no member is wanted."""
        owner: Attempt | Group = attempt.group or attempt
        with self.lock:
            ref = owner.ref
            if ref is None or self._waiting.get(ref) is not owner:
                return  # not launched yet (the launch stops it) or already ended
            if attempt.group is not None and attempt.group.live > 0:
                return  # other members still want the batch's result
            del self._waiting[ref]
            owner.ref = None
        self._stop(ref, attempt)

    def _stop(self, ref: Any, attempt: Attempt) -> None:
        try:
            self.workers.stop(ref, attempt)
        except Exception as exc:
            log.debug("cancel of %s failed: %s", attempt.work.task_id, exc)

    # -- outcomes ------------------------------------------------------------------------

    def _collect(self, ready: list[Any]) -> None:
        try:
            values: list[Any] | None = ray.get(ready)
        except Exception:
            values = None
        outcomes: list[tuple[Any, Any, BaseException | None]] = []
        for index, ref in enumerate(ready):
            if values is not None:
                outcomes.append((ref, values[index], None))
                continue
            try:
                outcomes.append((ref, ray.get(ref), None))
            except Exception as exc:
                outcomes.append((ref, None, exc))
        commands: list[Command] = []
        try:
            with self.lock:
                for ref, value, error in outcomes:
                    owner = self._waiting.pop(ref, None)
                    if owner is None:
                        continue  # cancelled: its late result is dropped
                    owner.ref = None
                    if isinstance(owner, Group):
                        commands.extend(self._take_batch(owner, value, error))
                    else:
                        commands.extend(self._take_outcome(owner, value, error))
        finally:  # nothing popped is dropped: what was gathered is carried out
            self.execute(commands)

    def _take_outcome(
        self, attempt: Attempt, value: Any, error: BaseException | None
    ) -> list[Command]:
        """One attempt's outcome into the scheduler (under the lock). Should ray_ft itself
        fail here, the call ends with that error instead of hanging."""
        try:
            commands = self.sched.handle(attempt_done(attempt.attempt_id, value, error))
            if error is not None:
                reason = self.workers.died(attempt, error)
                if reason is not None:  # out of the scheduler at once: never given work again
                    commands.extend(self.sched.handle(WorkerLost(attempt.node_id, reason)))
            return commands
        except Exception as exc:
            log.exception("ray_ft failed to take the outcome of attempt %s", attempt.attempt_id)
            return self.sched.handle(Aborted(attempt, exc))

    def _take_batch(self, group: Group, value: Any, error: BaseException | None) -> list[Command]:
        """A batch's outcome (under the lock): each wanted member's own result or
        exception; a batch that died as a whole is split by the scheduler."""
        inflight = self.sched.inflight
        wanted = [a for a in group.attempts if inflight.get(a.attempt_id) is a]
        commands: list[Command] = []
        try:
            for event in batch_done(group.attempts, {a.attempt_id for a in wanted}, value, error):
                commands.extend(self.sched.handle(event))  # those taken keep their commands
        except Exception as exc:
            log.exception("ray_ft failed to take the outcome of a batch")
            commands.extend(self.sched.handle(*[Aborted(a, exc) for a in wanted]))
        return commands


def _run(weak: weakref.ref[Loop], kick: threading.Event) -> None:
    """The loop's thread: a strong reference only while there is work."""
    while True:
        loop = weak()
        if loop is None:
            return
        try:
            state = loop.step()
        except (Exception, SystemExit) as exc:  # Ray raises SystemExit in other threads'
            if not loop.ray_up():  # calls during ray.shutdown(): it came mid-round
                loop.ray_gone()
                state = Round.DONE
            elif isinstance(exc, SystemExit):  # not Ray's (a done callback's sys.exit)
                raise
            else:  # keep serving futures whatever one round hit
                log.exception("executor round failed")
                state = Round.BUSY
                time.sleep(0.1)
        if state == Round.DONE:
            loop.workers.close()
            if loop._link is not None:
                loop._link.close()
            return
        if state == Round.IDLE:
            del loop  # idle: only the weak reference remains while we wait
            kick.wait()
            kick.clear()


def _resolve(command: Resolve) -> None:
    future = command.future
    if future.done():
        return
    try:
        if command.error is not None:
            future.set_exception(command.error)
        else:
            future.set_result(command.value)
    except cf.InvalidStateError:  # resolved meanwhile (cancelled): nothing to do
        pass
