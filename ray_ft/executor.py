"""FaultTolerantExecutor: a concurrent.futures.Executor whose work runs as Ray tasks.

The executor does its own placement: every attempt is pinned to one usable node
(NodeAffinity, soft=False), so it always knows where work runs. That is what lets it
abandon the attempts of a frozen node, keep in-flight work within live capacity, send only
trial tasks to HALF_OPEN nodes and retry elsewhere. Ray runs each attempt once
(max_retries=0); retries wait their backoff on a timer heap in the monitor thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
import ray.exceptions as ray_exc
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft._dispatch import Attempt, CallSpec, Shape, Work, callable_blob, trampoline
from ray_ft._manager_client import (
    ActorManagerClient,
    Exclusions,
    LocalManagerClient,
    ManagerClient,
)
from ray_ft.attribution import Blame, CrashLedger
from ray_ft.config import FTConfig
from ray_ft.failures import (
    FailureEvent,
    FailureType,
    NodeFailedError,
    TaskFailedError,
    TaskTimeoutError,
    classify_failure,
)
from ray_ft.manager import FaultToleranceManager
from ray_ft.metrics import get_metrics

__all__ = ["CapacityError", "FaultTolerantExecutor"]

log = logging.getLogger(__name__)

_PASSTHROUGH = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "accelerator_type",
    "runtime_env",
    "name",
}
_OWNED = {"max_retries", "retry_exceptions", "scheduling_strategy", "max_calls"}
_NODE_REFRESH_S = 1.0
_WAIT_S = 0.05
_NO_OPTIONS: dict[str, Any] = {}  # plain submit(): the executor's own CallSpec
_SPEC_CACHE_SIZE = 256


class CapacityError(RuntimeError):
    """No usable node could run the task for ``capacity_wait_timeout`` seconds."""


class FaultTolerantExecutor(cf.Executor):
    """Run callables as fault-tolerant Ray tasks: ``submit``, ``map``, ``shutdown``.

    ``manager``: a manager actor handle (default: :func:`get_manager` with this config),
    or ``False`` for breakers local to this executor. ``queue_depth`` attempts per free
    slot are handed to Ray at once (timed attempts get one per slot, so their clock
    starts when they run). Other keyword arguments are Ray task options.
    """

    def __init__(
        self,
        config: FTConfig | dict[str, Any] | None = None,
        *,
        manager: Any = None,
        max_in_flight: int | None = None,
        queue_depth: int = 4,
        clock: Callable[[], float] = time.monotonic,
        **task_options: Any,
    ) -> None:
        self.config = FTConfig.coerce(config)
        self._task_options = _check_options(task_options)
        if max_in_flight is not None and max_in_flight < 1:
            msg = f"max_in_flight={max_in_flight!r} is not valid; pass a positive int or None"
            raise ValueError(msg)
        if queue_depth < 1:
            msg = f"queue_depth={queue_depth!r} is not valid; pass a positive int"
            raise ValueError(msg)
        if not ray.is_initialized():
            ray.init()
        self.max_in_flight = max_in_flight
        self.queue_depth = queue_depth
        self._clock = clock
        self._policy = FaultToleranceManager(self.config, clock=clock)
        self._ledger = CrashLedger()
        self._client: ManagerClient
        if manager is False:
            # breakers of their own: the retry bookkeeping above must not count twice
            self._client = LocalManagerClient(FaultToleranceManager(self.config, clock=clock))
        else:
            if manager is None:
                from ray_ft.actors.manager_actor import get_manager

                manager = get_manager(config if config is not None else {})
            self._client = ActorManagerClient(manager, clock=clock)
        self.manager = manager if manager is not False else None

        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: dict[Shape, deque[Work]] = {}
        self._timers: list[tuple[float, int, Work]] = []
        self._inflight: dict[Any, Attempt] = {}
        self._load: Counter[tuple[str, Shape]] = Counter()
        self._nodes: dict[str, dict[str, float]] = {}
        self._nodes_at = -float("inf")
        self._exclusions = Exclusions()
        self._trial_slots: dict[str, int] = {}
        self._trial_busy: set[str] = set()
        self._zero_capacity_since: dict[Shape, float] = {}
        self._reports: list[FailureEvent] = []
        self._remote_cache: dict[tuple[Any, ...], Any] = {}
        self._specs: OrderedDict[tuple[Any, ...], CallSpec] = OrderedDict()
        self._default_spec = CallSpec.of(self._task_options, self.config.task_timeout)
        self._usable: list[str] | None = None
        self._deadlines: list[tuple[float, int, Any]] = []
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._shutdown = False
        self._stats: Counter[str] = Counter()
        self._failures_by_type: Counter[str] = Counter()
        self._max_in_flight_seen = 0
        self._refresh_nodes(force=True)
        self._client.poll()
        self._monitor = threading.Thread(target=self._run, name="ray_ft-executor", daemon=True)
        self._monitor.start()

    # -- the Executor API ----------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future. Unpicklable input raises here."""
        return self._submit(fn, args, kwargs, _NO_OPTIONS)

    def options(self, **options: Any) -> _OptionsView:
        """A view whose submissions carry these Ray options and ``timeout`` (seconds)."""
        return _OptionsView(self, _check_options(options))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; optionally cancel queued futures and wait for the rest."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for queue in self._pending.values():
                    for work in queue:
                        work.future.cancel()
                    queue.clear()
            self._wakeup.notify_all()
        if wait:
            self._monitor.join()

    def stats(self) -> dict[str, Any]:
        """Counts of this executor's work: submitted, succeeded, failed, retries, and more."""
        with self._lock:
            return {
                "submitted": self._stats["submitted"],
                "succeeded": self._stats["succeeded"],
                "failed": self._stats["failed"],
                "cancelled": self._stats["cancelled"],
                "retries": self._stats["retries"],
                "abandoned": self._stats["abandoned"],
                "replaced": self._stats["replaced"],
                "timeouts": self._stats["timeouts"],
                "failures_by_type": dict(self._failures_by_type),
                "excluded_nodes": sorted(self._exclusions.excluded),
                "in_flight": len(self._inflight),
                "max_in_flight_seen": self._max_in_flight_seen,
                "pending": sum(len(q) for q in self._pending.values()) + len(self._timers),
                "nodes": sorted(self._nodes),
            }

    # -- submission ----------------------------------------------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> cf.Future[Any]:
        if not callable(fn):
            msg = f"{fn!r} is not callable; pass a function, e.g. submit(pow, 2, 3)"
            raise TypeError(msg)
        is_remote = isinstance(fn, ray.remote_function.RemoteFunction)
        spec = self._spec(options, fn._default_options if is_remote else None)  # type: ignore[attr-defined]
        name = spec.name or _callable_name(fn)
        blob = None if is_remote else callable_blob(fn)
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            if self._shutdown:
                msg = "cannot submit after shutdown(); create a new FaultTolerantExecutor"
                raise RuntimeError(msg)
            task_id = f"{name}-{next(self._ids)}"
            work = Work(task_id, name, fn if is_remote else None, blob, args, kwargs, spec, future)
            self._stats["submitted"] += 1
            queue = self._pending.setdefault(work.shape, deque())
            if queue or not self._dispatch_one(work, raise_errors=True):
                queue.append(work)
            # wake a monitor idling with nothing in flight, so it starts watching at once
            self._wakeup.notify()
        return future

    def _spec(
        self, options: dict[str, Any], remote_defaults: dict[str, Any] | None = None
    ) -> CallSpec:
        """The CallSpec of a call: the remote function's own options (``@ray.remote(...)``),
        then the executor's, then the call's. Bounded LRU cache keyed by value."""
        if options is _NO_OPTIONS and not remote_defaults:
            return self._default_spec
        own = {k: v for k, v in (remote_defaults or {}).items() if k in _PASSTHROUGH}
        key = (_options_key(own), _options_key(options))
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
            return spec
        spec = CallSpec.of({**own, **self._task_options, **options}, self.config.task_timeout)
        self._specs[key] = spec
        if len(self._specs) > _SPEC_CACHE_SIZE:
            self._specs.popitem(last=False)
        return spec

    # -- placement -----------------------------------------------------------------------

    def _capacity(self, node_id: str, shape: Shape) -> int:
        limit = shape.slots_on(self._nodes.get(node_id, {}))
        return limit if shape.timed else limit * self.queue_depth

    def _usable_nodes(self) -> list[str]:
        """Alive nodes that are neither excluded nor HALF_OPEN (cached per view change)."""
        if self._usable is None:
            excl = self._exclusions
            half_open = {n for n, _ in excl.half_open}
            self._usable = [n for n in self._nodes if n not in excl.excluded and n not in half_open]
        return self._usable

    def _pick_node(self, work: Work) -> tuple[str, bool] | None:
        """The least loaded usable node with room (avoiding nodes this work failed on)."""
        for node_id, slots in self._trial_slots.items():
            if (
                slots > 0
                and node_id not in self._trial_busy
                and node_id in self._nodes
                and node_id not in work.avoid
                and self._capacity(node_id, work.shape) > 0
            ):
                return node_id, True
        best: tuple[float, str] | None = None
        fallback: tuple[float, str] | None = None
        for node_id in self._usable_nodes():
            cap = self._capacity(node_id, work.shape)
            used = self._load[(node_id, work.shape)]
            if used >= cap:
                continue
            key = (used / cap, node_id)
            if node_id in work.avoid:
                fallback = key if fallback is None or key < fallback else fallback
            elif best is None or key < best:
                best = key
        chosen = best or fallback
        return None if chosen is None else (chosen[1], False)

    def _dispatch_one(self, work: Work, *, raise_errors: bool = False) -> bool:
        """Hand one attempt to Ray if a node has room; False when none has."""
        if self.max_in_flight is not None and len(self._inflight) >= self.max_in_flight:
            return False
        picked = self._pick_node(work)
        if picked is None:
            return False
        node_id, trial = picked
        if not work.started:
            if not work.future.set_running_or_notify_cancel():
                self._stats["cancelled"] += 1
                return True  # cancelled while queued: consumed, nothing to run
            work.started = True
        try:
            ref = self._launch(work, node_id)
        except Exception as exc:
            msg = (
                f"could not serialize the call to {work.name}: {exc}; pass picklable "
                "arguments (Ray pickles them to ship them to a worker)"
            )
            error = TypeError(msg)
            if raise_errors:
                work.future.cancel()
                # a Future set running cannot be cancelled: fail it and raise
                if not work.future.done():
                    work.future.set_exception(error)
                self._stats["failed"] += 1
                raise error from exc
            work.future.set_exception(error)
            self._stats["failed"] += 1
            return True
        if trial:
            self._trial_slots[node_id] -= 1
            self._trial_busy.add(node_id)
        deadline = None
        if work.spec.timeout is not None:
            deadline = self._clock() + work.spec.timeout
            heapq.heappush(self._deadlines, (deadline, next(self._seq), ref))
        self._inflight[ref] = Attempt(work, node_id, deadline, trial)
        self._load[(node_id, work.shape)] += 1
        if len(self._inflight) > self._max_in_flight_seen:
            self._max_in_flight_seen = len(self._inflight)
        return True

    def _launch(self, work: Work, node_id: str) -> Any:
        remote = self._remote_for(work, node_id)
        if work.remote_fn is not None:
            return remote.remote(*work.args, **work.kwargs)
        return remote.remote(work.blob, *work.args, **work.kwargs)

    def _remote_for(self, work: Work, node_id: str) -> Any:
        """The remote function with this work's options, pinned to ``node_id`` (cached)."""
        key = (node_id, work.name, work.spec.key, work.remote_fn)
        remote = self._remote_cache.get(key)
        if remote is None:
            base = work.remote_fn if work.remote_fn is not None else trampoline
            remote = base.options(
                **work.spec.options,
                name=work.name,
                max_retries=0,
                retry_exceptions=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            if len(self._remote_cache) > 4096:
                self._remote_cache.clear()
            self._remote_cache[key] = remote
        return remote

    # -- the monitor thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._tick():
                    return
            except Exception:  # keep serving futures whatever one round hit
                log.exception("executor monitor round failed")
                time.sleep(0.1)

    def _tick(self) -> bool:
        """One round: refresh views, fire timers and watchdogs, dispatch, collect results."""
        now = self._clock()
        self._refresh_nodes()
        snapshot = self._client.poll()
        with self._lock:
            if snapshot is not None:
                self._apply_exclusions(snapshot)
            self._fire_timers(now)
            self._watchdog(now)
            self._dispatch_pending(now)
            refs = list(self._inflight)
            idle = not refs and not self._timers and not any(self._pending.values())
            if idle and self._shutdown:
                self._flush_reports()
                return True
            wait_s = self._wait_budget(now)
            if not refs:
                self._flush_reports()
                self._wakeup.wait(wait_s)
                return False
        ready, _ = ray.wait(refs, num_returns=1, timeout=wait_s, fetch_local=False)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            self._collect(ready)
        with self._lock:
            self._flush_reports()
        return False

    def _wait_budget(self, now: float) -> float:
        budget = _WAIT_S
        if self._timers:
            budget = min(budget, max(0.0, self._timers[0][0] - now))
        if self._deadlines:
            budget = min(budget, max(0.0, self._deadlines[0][0] - now))
        return budget

    def _refresh_nodes(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._nodes_at < _NODE_REFRESH_S:
            return
        self._nodes_at = now
        try:
            nodes = {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")}
        except Exception as exc:
            log.debug("ray.nodes() failed: %s", exc)
            return
        with self._lock:
            gone = set(self._nodes) - set(nodes)
            if nodes != self._nodes:
                self._nodes = nodes
                self._usable = None
            for node_id in gone:
                self._abandon_node(node_id, "is dead (Ray)")

    def _apply_exclusions(self, snapshot: Exclusions) -> None:
        before = self._exclusions.failed | self._exclusions.dead
        self._exclusions = snapshot
        self._usable = None
        for node_id in (snapshot.failed | snapshot.dead) - before:
            self._abandon_node(node_id, "was declared failed by the health probes")
        for node_id, trials in snapshot.half_open:
            if (
                trials > 0
                and node_id not in self._trial_busy
                and self._trial_slots.get(node_id, 0) <= 0
                and node_id in self._nodes
                and self._client.acquire_trial(node_id)
            ):
                self._trial_slots[node_id] = 1
        half_open = {n for n, _ in snapshot.half_open}
        for node_id in list(self._trial_slots):
            if node_id not in half_open:
                del self._trial_slots[node_id]

    def _abandon_node(self, node_id: str, reason: str) -> None:
        """Rerun a failed node's attempts elsewhere at once: ray_ft's own verdict, so it
        charges nobody (neither the node's breaker nor the task's retries)."""
        for ref, attempt in list(self._inflight.items()):
            if attempt.node_id == node_id:
                self._drop_attempt(ref, attempt, cancel=True)
                self._requeue(attempt, NodeFailedError(node_id, reason), "abandoned")

    def _requeue(self, attempt: Attempt, error: BaseException, counter: str) -> None:
        """Put an attempt's work back at the head of its queue, away from that node."""
        work = attempt.work
        self._stats[counter] += 1
        self._reports.append(  # for the record; blamed on nobody, so it charges nothing
            FailureEvent(
                timestamp=time.time(),
                failure_type=FailureType.NODE_DIED
                if counter == "abandoned"
                else (FailureType.APPLICATION_ERROR),
                details=f"{type(error).__name__}: {error}"[:500],
                task_id=work.task_id,
                worker_id=attempt.node_id,
                blame=(Blame.NONE if counter == "abandoned" else Blame.PLACEMENT).value,
            )
        )
        if attempt.trial:
            self._client.report_trial(attempt.node_id, False, None)  # gives the slot back
        work.avoid = work.avoid | {attempt.node_id}
        log.info("%s %s: %s", counter, work.task_id, error)
        self._pending.setdefault(work.shape, deque()).appendleft(work)

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, work = heapq.heappop(self._timers)
            self._pending.setdefault(work.shape, deque()).appendleft(work)

    def _compact_deadlines(self) -> None:
        """Drop the deadlines of finished attempts once they outnumber the live ones
        (a heap cannot remove an entry; 3,000 timed tasks would otherwise linger)."""
        if len(self._deadlines) > 2 * len(self._inflight) + 64:
            self._deadlines = [
                (a.deadline, next(self._seq), ref)
                for ref, a in self._inflight.items()
                if a.deadline is not None
            ]
            heapq.heapify(self._deadlines)

    def _watchdog(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, ref = heapq.heappop(self._deadlines)
            attempt = self._inflight.get(ref)
            if attempt is not None:
                self._stats["timeouts"] += 1
                self._drop_attempt(ref, attempt, cancel=True)
                timeout = attempt.work.timeout or 0.0
                self._attempt_failed(
                    attempt, TaskTimeoutError(timeout, attempt.work.name), FailureType.TASK_TIMEOUT
                )

    def _dispatch_pending(self, now: float) -> None:
        for shape, queue in self._pending.items():
            while queue and self._dispatch_one(queue[0]):
                queue.popleft()
            if not queue:
                self._zero_capacity_since.pop(shape, None)
                continue
            if any(self._capacity(n, shape) > 0 for n in self._usable_nodes()) or any(
                s > 0 for s in self._trial_slots.values()
            ):
                self._zero_capacity_since.pop(shape, None)
                continue
            since = self._zero_capacity_since.setdefault(shape, now)
            if now - since >= self.config.capacity_wait_timeout:
                self._fail_no_capacity(shape, queue)

    def _fail_no_capacity(self, shape: Shape, queue: deque[Work]) -> None:
        excl = sorted(self._exclusions.excluded)
        msg = (
            f"no usable node could run tasks needing {shape.describe()} for "
            f"{self.config.capacity_wait_timeout:g}s ({len(self._nodes)} alive, "
            f"{len(excl)} excluded); add nodes, lower the request, or raise "
            "capacity_wait_timeout"
        )
        while queue:
            work = queue.popleft()
            if not work.started and not work.future.set_running_or_notify_cancel():
                continue
            self._finish_attribution(work)
            self._stats["failed"] += 1
            work.future.set_exception(CapacityError(msg))
        self._zero_capacity_since.pop(shape, None)

    # -- outcomes ------------------------------------------------------------------------

    def _drop_attempt(self, ref: Any, attempt: Attempt, *, cancel: bool = False) -> None:
        self._inflight.pop(ref, None)
        self._load[(attempt.node_id, attempt.work.shape)] -= 1
        if attempt.trial:
            self._trial_busy.discard(attempt.node_id)
        if cancel:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:
                log.debug("cancel of %s failed: %s", attempt.work.task_id, exc)

    def _collect(self, ready: list[Any]) -> None:
        values: list[Any] | None
        try:
            values = ray.get(ready)
        except Exception:
            values = None
        succeeded: list[tuple[cf.Future[Any], Any]] = []
        with self._lock:
            for index, ref in enumerate(ready):
                attempt = self._inflight.get(ref)
                if attempt is None:
                    continue  # abandoned or timed out: a late result is dropped
                if values is not None:
                    value, error = values[index], None
                else:
                    value, error = _get_one(ref)
                self._drop_attempt(ref, attempt)
                if error is None:
                    self._stats["succeeded"] += 1
                    if attempt.work.task is not None:
                        self._policy.forget_task(attempt.work.task_id)
                        self._reports.extend(
                            self._ledger.succeeded(attempt.work.task_id, attempt.node_id)
                        )
                    if attempt.trial:
                        self._client.report_trial(attempt.node_id, True, None)
                    if attempt.work.first_failure_at is not None:
                        get_metrics().recovered(self._clock() - attempt.work.first_failure_at)
                    succeeded.append((attempt.work.future, value))
                else:
                    try:
                        self._attempt_failed(attempt, error, classify_failure(error))
                    except Exception as internal:  # never lose a future to a bug here
                        log.exception("handling the failure of %s failed", attempt.work.task_id)
                        if not attempt.work.future.done():
                            attempt.work.future.set_exception(internal)
            self._dispatch_pending(self._clock())
            self._compact_deadlines()
        for future, value in succeeded:
            future.set_result(value)

    def _attempt_failed(
        self, attempt: Attempt, error: BaseException, failure_type: FailureType
    ) -> None:
        work = attempt.work
        if isinstance(error, ray_exc.TaskUnschedulableError):
            self._placement_failed(attempt, error)
            return
        original = _unwrap(error)
        task = work.failure_task()
        task.worker_id = attempt.node_id
        decision = self._policy.handle_task_failure(task, failure_type, original)
        blame, decided = self._ledger.failed(self._policy.history[-1])
        event = dataclasses.replace(self._policy.history[-1], blame=blame.value)
        work.events = [*(work.events or ()), event]
        self._failures_by_type[failure_type.value] += 1
        metrics = get_metrics()
        metrics.failure(failure_type.value)
        self._report_decided(work, decided)
        if attempt.trial:
            self._client.report_trial(
                attempt.node_id, False, event if blame is Blame.NODE else None
            )
        if work.first_failure_at is None:
            work.first_failure_at = self._clock()
        if decision:
            self._stats["retries"] += 1
            metrics.retry()
            if failure_type is not FailureType.APPLICATION_ERROR:
                # the node may be at fault: retry elsewhere (an application error is the
                # task's own, and the same node keeps its warm worker)
                work.avoid = work.avoid | {attempt.node_id}
            heapq.heappush(self._timers, (self._clock() + decision.delay, next(self._seq), work))
            return
        self._stats["failed"] += 1
        self._finish_attribution(work)
        if failure_type is FailureType.APPLICATION_ERROR:
            work.future.set_exception(original)
            return
        metrics.gave_up(failure_type.value)
        failed = TaskFailedError(
            f"{work.name} failed {task.attempts} times; last: {failure_type.value}: "
            f"{original}. {decision.reason}",
            failure_type=failure_type,
            attempts=task.attempts,
            events=work.events or (),
        )
        failed.__cause__ = original
        work.future.set_exception(failed)

    def _placement_failed(self, attempt: Attempt, error: BaseException) -> None:
        """Ray could not schedule a pinned attempt: re-place it, charging nobody.

        On a node Ray has dropped this is a node death seen early (the node table follows);
        on a live node the request does not fit there. Either way it is no retry; a request
        that fits nowhere fails with CapacityError after a few placements.
        """
        work = attempt.work
        work.placement_failures += 1
        if work.placement_failures > max(3, len(self._nodes)):
            self._stats["failed"] += 1
            self._finish_attribution(work)
            msg = (
                f"Ray could not schedule {work.name} (needs {work.shape.describe()}) on any "
                f"of {work.placement_failures} nodes it was placed on: {error}; lower the "
                "request or add nodes that can meet it"
            )
            work.future.set_exception(CapacityError(msg))
            return
        self._requeue(attempt, error, "replaced")

    def _finish_attribution(self, work: Work) -> None:
        """A task ended without success: its undecided failures charge nobody."""
        if work.task is not None:
            self._policy.forget_task(work.task_id)
            self._report_decided(work, self._ledger.finished(work.task_id))

    def _report_decided(self, work: Work, decided: list[FailureEvent]) -> None:
        """Send failures whose blame is now known, and note it on the work's own events."""
        self._reports.extend(decided)
        blames = {e.attempt: e.blame for e in decided if e.task_id == work.task_id}
        if blames and work.events:
            work.events = [
                dataclasses.replace(e, blame=blames[e.attempt]) if e.attempt in blames else e
                for e in work.events
            ]

    def _flush_reports(self) -> None:
        if self._reports:
            reports, self._reports = self._reports, []
            self._client.report(reports)


class _OptionsView(cf.Executor):
    """The executor with per-call options; shutting the view down does nothing."""

    def __init__(self, parent: FaultTolerantExecutor, options: dict[str, Any]) -> None:
        self._parent = parent
        self._options = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Like FaultTolerantExecutor.submit, with this view's options."""
        return self._parent._submit(fn, args, kwargs, self._options)

    def options(self, **options: Any) -> _OptionsView:
        """A view with more options layered on these."""
        return _OptionsView(self._parent, {**self._options, **_check_options(options)})

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like Executor.map, with this view's options."""
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A view owns nothing; shut the parent executor down instead."""


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    for key, value in options.items():
        if key in _OWNED:
            msg = (
                f"option {key!r} is managed by ray_ft; configure retries through FTConfig "
                "(max_retries, retry_on, retry_exceptions) and let ray_ft place tasks"
            )
            raise ValueError(msg)
        if key == "timeout":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                msg = f"timeout={value!r} is not valid; pass seconds > 0 or None"
                raise ValueError(msg)
            continue
        if key not in _PASSTHROUGH:
            msg = (
                f"unknown task option {key!r}; pass one of "
                f"{', '.join(sorted(_PASSTHROUGH | {'timeout'}))}"
            )
            raise ValueError(msg)
    return dict(options)


def _options_key(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def _callable_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", None)  # functools.partial
    target = inner if inner is not None else fn
    remote_name = getattr(getattr(target, "_function", None), "__name__", None)
    return str(remote_name or getattr(target, "__name__", None) or type(target).__name__)


def _get_one(ref: Any) -> tuple[Any, BaseException | None]:
    try:
        return ray.get(ref), None
    except Exception as exc:
        return None, exc


def _unwrap(error: BaseException) -> BaseException:
    """The user's own exception inside a RayTaskError, with the remote traceback as a note."""
    if isinstance(error, ray_exc.RayTaskError) and error.cause is not None:
        cause = error.cause
        add_note = getattr(cause, "add_note", None)
        notes = getattr(cause, "__notes__", [])
        if add_note is not None and not any(n.startswith("remote traceback") for n in notes):
            add_note(f"remote traceback:\n{error}")
        return cause
    return error
