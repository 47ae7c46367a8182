"""FaultTolerantExecutor: a concurrent.futures.Executor whose work runs as Ray tasks.

A thin Ray loop around the pure :class:`~ray_ft.core.scheduler.Scheduler`. The executor pins
every attempt to one node (NodeAffinity, soft=False), so it always knows where work runs:
that is what lets it abandon the attempts of a frozen node, send only trial tasks to a
HALF_OPEN node and keep a slow node from setting the end of a batch. Ray runs each attempt
once (max_retries=0); retries wait their backoff on the scheduler's timer heap.

The lock is held only to hand events to the scheduler and take its commands; every Ray
call (launch, wait, get, cancel, manager calls) and every future resolution happens outside
it. The loop thread sleeps until a completion, a submit, a timer or a deadline; an idle
executor's thread blocks on an event and holds only a weak reference, so a dropped executor
is collected, while one with work in flight is kept alive until the work is done.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
import ray.exceptions as ray_exc
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_ft.config import FTConfig
from ray_ft.core.batching import MAX_BATCH
from ray_ft.core.commands import (
    AcquireTrial,
    Cancel,
    CapacityError,
    Command,
    Launch,
    LaunchBatch,
    ReleaseTrial,
    Report,
    Resolve,
)
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import Attempt, CallSpec, Work
from ray_ft.failures import FailureEvent, FailureType, classify_failure
from ray_ft.manager.client import ActorManagerClient, LocalManagerClient, ManagerClient
from ray_ft.manager.state import FaultToleranceManager
from ray_ft.metrics import get_metrics
from ray_ft.nodes import alive_resources
from ray_ft.runtime.batch_task import batch_task, pack, unpack_outcome
from ray_ft.runtime.elastic import ElasticLink, NodeWatcher
from ray_ft.runtime.options import (
    PASSTHROUGH,
    callable_name,
    check_options,
    check_remote_function,
    check_values,
    options_key,
    unwrap,
)
from ray_ft.runtime.remote import (
    call_arguments,
    callable_blob,
    callable_identity,
    initializer_blob,
    trampoline,
)

__all__ = ["CapacityError", "FaultTolerantExecutor", "WorkerGoneError"]

log = logging.getLogger(__name__)

_NODE_REFRESH_S = 1.0
_TICK_S = 0.05  # longest a busy loop goes without a full scheduler tick
_BUSY_WAIT_S = 0.1  # longest a busy loop waits before it picks up refs launched meanwhile
_NO_OPTIONS: dict[str, Any] = {}  # plain submit(): the executor's own CallSpec
_SPEC_CACHE_SIZE = 256
_REMOTE_CACHE_SIZE = 4096
_FIRST_SNAPSHOT_S = 10.0
# Executors with work in flight: held here so that a dropped executor finishes its work
# (its thread holds only a weak reference); released when it goes idle.
_BUSY: set[FaultTolerantExecutor] = set()  # changed under the executor's own lock


class WorkerGoneError(RuntimeError):
    """The worker an attempt was placed on is gone (an actor that was killed meanwhile):
    the attempt is re-placed, charging nobody."""


class FaultTolerantExecutor(cf.Executor):
    """Run callables as fault-tolerant Ray tasks: ``submit``, ``map``, ``shutdown``.

    ``manager``: a manager actor handle (default: :func:`get_manager` with this config),
    or ``False`` for breakers local to this executor. Up to ``queue_depth`` attempts per
    slot are handed to Ray at once on a node that finishes work quickly (one on a slow
    node, one for timed attempts, so their clock starts when they run). Other keyword
    arguments are Ray task options.

    The stdlib pools' arguments mean what they mean there: ``max_workers`` is how many
    calls run at once (``max_in_flight``; None: as many as the cluster has room for),
    ``initializer(*initargs)`` runs once in each Ray worker process before its first call
    of this executor, and ``thread_name_prefix`` names the executor's thread.
    """

    _cancel_kills_worker = False  # a Cancel stops one task, not its worker
    _batches = True  # tiny calls may be packed into one Ray task (config.batching)
    _demands = True  # queued calls are resource demand the autoscaler sees (not actor calls)

    def __init__(
        self,
        config: FTConfig | dict[str, Any] | None = None,
        *,
        manager: Any = None,
        max_in_flight: int | None = None,
        queue_depth: int = 4,
        clock: Callable[[], float] = time.monotonic,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        thread_name_prefix: str = "",
        **task_options: Any,
    ) -> None:
        if isinstance(config, int) and not isinstance(config, bool):
            msg = (
                f"FaultTolerantExecutor({config!r}): the first argument is the config; "
                f"pass max_workers={config!r} for that many calls at once"
            )
            raise TypeError(msg)
        self.config = FTConfig.coerce(config)
        self._task_options = check_options(task_options)
        max_in_flight = _max_in_flight(max_in_flight, max_workers)
        self._setup = initializer_blob(initializer, initargs)
        if queue_depth < 1:
            msg = f"queue_depth={queue_depth!r} is not valid; pass a positive int"
            raise ValueError(msg)
        if not ray.is_initialized():
            ray.init()
        self.max_in_flight = max_in_flight
        self.queue_depth = queue_depth
        self._clock = clock
        self._client: ManagerClient
        if manager is False:
            self._client = LocalManagerClient(FaultToleranceManager(self.config, clock=clock))
        else:
            if manager is None:
                from ray_ft.actors.manager_actor import get_manager

                manager = get_manager(config if config is not None else {})
            self._client = ActorManagerClient(manager, clock=clock)
        self.manager = manager if manager is not False else None
        # the manager sums every driver's demand into the autoscaler's one request
        self._link = ElasticLink(manager, clock=clock) if manager is not False else None
        self._demand: dict[Any, int] = {}
        self._watcher = NodeWatcher()
        self._looked = False  # the first look at Ray's node table is made in __init__
        self._lock = threading.Lock()
        self._sched = Scheduler(
            self.config,
            clock=clock,
            queue_depth=queue_depth,
            max_in_flight=max_in_flight,
            metrics=get_metrics(),
            cancel_kills_worker=self._cancel_kills_worker,
            batching=self._batches and self.config.batching,
        )
        self._refs: dict[int, Any] = {}  # attempt id -> ObjectRef
        self._ids_of: dict[Any, int | _Members] = {}  # ObjectRef -> attempt id(s)
        self._cancel_on_launch: set[int] = set()
        self._remote_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._specs: OrderedDict[tuple[Any, ...], CallSpec] = OrderedDict()
        self._default_spec = CallSpec.of(self._task_options, self.config.task_timeout)
        self._nodes_at = -float("inf")
        self._refresh_s = getattr(self, "_refresh_s", _NODE_REFRESH_S)
        self._pending_nodes: list[Any] = []
        self._ids = 0
        self._shutdown = False
        self._kick = threading.Event()
        self._ticked_at = -float("inf")
        self._idle_now = threading.Event()  # set while nothing is queued or in flight
        self._idle_now.set()
        self._given_up: collections.deque[Work] = collections.deque()  # see _give_up
        self._refresh_nodes()
        first = self._client.fetch(timeout=_FIRST_SNAPSHOT_S)  # never place blind
        self._apply([*self._poll_manager(), *([("exclusions", first)] if first else [])])
        weakref.finalize(self, self._kick.set)  # a dropped idle executor ends its thread
        weakref.finalize(self, self._watcher.stop)
        self._thread = threading.Thread(
            target=_loop,
            args=(weakref.ref(self), self._kick),
            name=f"{thread_name_prefix}ray_ft-executor",
            daemon=True,
        )
        self._thread.start()

    # -- the Executor API ----------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future. Unpicklable input raises here."""
        return self._submit(fn, args, kwargs, _NO_OPTIONS)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like Executor.map; every call is queued at once. ``chunksize=None`` packs tiny
        calls by their pace (see README, batching); an int packs that many per Ray task."""
        return self._map(fn, iterables, timeout, chunksize, _NO_OPTIONS)

    def options(self, **options: Any) -> _OptionsView:
        """A view whose submissions carry these Ray options and ``timeout`` (seconds)."""
        return _OptionsView(self, check_options(options))

    @property
    def _max_workers(self) -> int:
        """How many calls to keep submitted, for libraries that size their work by it as
        for a pool (``dask.compute(scheduler=ex)``): ``max_in_flight``, or enough queued
        calls for tiny ones to be packed (the executor queues and places the rest)."""
        return self.max_in_flight or MAX_BATCH

    def for_generations(self) -> cf.Executor:
        """The executor as ``optimize()`` uses it: a generation waits for its slowest
        evaluation, so stragglers get backups unless the config says ``speculation``."""
        if self.config.speculation is None:
            return self.options(speculation=True)
        return self

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; optionally cancel queued futures and wait for the rest."""
        with self._lock:
            self._shutdown = True
            commands = self._sched.cancel_queued() if cancel_futures else []
        self._execute(commands)
        self._kick.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _give_up(self, works: list[Work]) -> None:
        """The caller will not take these calls' results (its map() iterator was closed,
        collected or timed out): a queued call is cancelled here, a running one is stopped
        by the loop (this may run in a garbage collector's finalizer on any thread, so it
        takes no executor lock: the loop picks the calls up)."""
        running = [w for w in works if not w.future.cancel() and not w.future.done()]
        if running:
            self._given_up.extend(running)
            self._kick.set()

    def stats(self) -> dict[str, Any]:
        """Counts of this executor's work: submitted, succeeded, failed, retries, and more."""
        if self._sched.idle:  # an idle loop does not poll: look at the manager here
            self._apply(self._poll_manager())
        with self._lock:
            return self._sched.summary()

    # -- submission ----------------------------------------------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> cf.Future[Any]:
        return self._queue_all(fn, [(args, kwargs)], options, None, raise_launch=True)[0].future

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | None,
        options: dict[str, Any],
    ) -> Iterator[Any]:
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            msg = f"chunksize={chunksize!r} is not valid; pass a positive int, or None (adaptive)"
            raise ValueError(msg)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (args, {}) for args in zip(*iterables)
        ]
        works = self._queue_all(fn, calls, options, chunksize, raise_launch=False)
        return _MapResults(self, works, timeout)

    def _queue_all(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        options: dict[str, Any],
        batch_cap: int | None,
        *,
        raise_launch: bool,
    ) -> list[Work]:
        """Queue every call, then dispatch once (a map's calls are packed from the start);
        with ``raise_launch`` a refused launch of the one call is raised here."""
        if not callable(fn):
            msg = f"{fn!r} is not callable; pass a function, e.g. submit(pow, 2, 3)"
            raise TypeError(msg)
        is_remote = isinstance(fn, ray.remote_function.RemoteFunction)
        if is_remote:
            check_remote_function(fn)
            if self._setup is not None:
                msg = (
                    f"{callable_name(fn)} is a Ray remote function, which runs without the "
                    "executor's initializer; pass the plain Python function instead"
                )
                raise ValueError(msg)
            if any("self" in kwargs for _, kwargs in calls):
                msg = (
                    f"a keyword argument named 'self' cannot reach the Ray remote function "
                    f"{callable_name(fn)} (Ray's .remote() takes that name); pass the plain "
                    "Python function, which gets every keyword"
                )
                raise ValueError(msg)
        spec = self._spec(options, fn._default_options if is_remote else None)  # type: ignore[attr-defined]
        name = spec.name or callable_name(fn)
        remote_fn, blob = self._target(fn, is_remote)
        kind = f"{name}#{callable_identity(fn)}"
        polled: list[Any] = []
        if self._sched.idle:  # an idle executor follows neither the node table nor the manager
            if self._clock() - self._nodes_at >= self._refresh_s:
                self._refresh_nodes()
            polled = self._poll_manager()
        with self._lock:
            if self._shutdown:
                msg = "cannot submit after shutdown(); create a new FaultTolerantExecutor"
                raise RuntimeError(msg)
            works = []
            for args, kwargs in calls:
                self._ids += 1
                work = Work(
                    f"{name}-{self._ids}",
                    name,
                    remote_fn,
                    blob,
                    args,
                    kwargs,
                    spec,
                    cf.Future(),
                    kind=kind,
                    batch_cap=batch_cap,
                )
                works.append(work)
            _BUSY.add(self)  # kept alive until its work is done, even if the caller drops it
            self._idle_now.clear()
            commands = self._feed(polled)
            commands.extend(self._sched.submit_all(works))
        raise_for = works[0] if raise_launch and len(works) == 1 else None
        self._execute(commands, raise_for=raise_for)
        self._kick.set()
        return works

    def _target(self, fn: Callable[..., Any], is_remote: bool) -> tuple[Any, bytes | None]:
        """What a Work runs: a remote function as it is, any other callable pickled once."""
        return (fn, None) if is_remote else (None, callable_blob(fn))

    def _spec(
        self, options: dict[str, Any], remote_defaults: dict[str, Any] | None = None
    ) -> CallSpec:
        """The CallSpec of a call: the remote function's own options (``@ray.remote(...)``),
        then the executor's, then the call's. Bounded LRU cache keyed by value."""
        if options is _NO_OPTIONS and not remote_defaults:
            return self._default_spec
        own = {k: v for k, v in (remote_defaults or {}).items() if k in PASSTHROUGH}
        check_values(own)
        key = (options_key(own), options_key(options))
        with self._lock:
            spec = self._specs.get(key)
            if spec is not None:
                self._specs.move_to_end(key)
                return spec
        spec = CallSpec.of({**own, **self._task_options, **options}, self.config.task_timeout)
        with self._lock:
            self._specs[key] = spec
            if len(self._specs) > _SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return spec

    # -- carrying out commands (never under the lock) -------------------------------------

    def _execute(self, commands: list[Command], *, raise_for: Work | None = None) -> None:
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
                        self._client.report_trial(command.node_id, command.success, command.event)
                except Exception:  # one command's trouble must not cost the others
                    log.exception("ray_ft could not carry out %s", type(command).__name__)
            commands = follow_up
        if reports:
            try:
                self._client.report(self._node_events(reports))
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
            self._client.request_trial(node_id)
        except Exception as exc:
            log.warning("could not ask the manager for a trial on %s: %s", node_id, exc)
            with self._lock:
                return self._sched.trial_granted(node_id, False)
        return []

    def _node_events(self, events: list[FailureEvent]) -> list[FailureEvent]:
        """Failure events as the manager takes them (worker ids are node ids here)."""
        return events

    def _launch(self, attempt: Attempt) -> tuple[list[Command], BaseException | None]:
        """Hand one attempt to Ray; a refused launch fails that call alone."""
        try:
            ref = self._start_call(attempt.work, attempt.node_id)
            hash(ref)  # a list of refs (num_returns != 1) is refused here, not later
        except WorkerGoneError as exc:
            with self._lock:
                self._cancel_on_launch.discard(attempt.attempt_id)
                return self._sched.worker_lost(attempt.node_id, str(exc)), None
        except Exception as exc:
            with self._lock:
                self._cancel_on_launch.discard(attempt.attempt_id)
                return self._sched.launch_failed(attempt.attempt_id, exc), exc
        with self._lock:
            self._refs[attempt.attempt_id] = ref
            self._ids_of[ref] = attempt.attempt_id
            cancel_now = attempt.attempt_id in self._cancel_on_launch
            self._cancel_on_launch.discard(attempt.attempt_id)
        if cancel_now:
            self._cancel(attempt)
        return [], None

    def _launch_batch(self, attempts: tuple[Attempt, ...]) -> list[Command]:
        """Hand a batch to Ray as one task; if Ray refuses it, its members are split."""
        ids = [a.attempt_id for a in attempts]
        try:
            members, refs = pack([a.work for a in attempts])
            remote = self._remote_for(attempts[0].work, attempts[0].node_id, batch=True)
            ref = remote.remote(attempts[0].work.blob, self._setup, members, *refs)
        except Exception as exc:
            with self._lock:
                self._cancel_on_launch.difference_update(ids)
                return self._sched.batch_failed(
                    ids, exc, FailureType.APPLICATION_ERROR, launch=True
                )
        with self._lock:
            wanted = set(ids)
            for attempt_id in ids:
                self._refs[attempt_id] = ref
            self._ids_of[ref] = _Members(attempts, wanted)
            cancel_now = [a for a in attempts if a.attempt_id in self._cancel_on_launch]
            self._cancel_on_launch.difference_update(ids)
        for attempt in cancel_now:
            self._cancel(attempt)
        return []

    def _start_call(self, work: Work, node_id: str) -> Any:
        """Hand one attempt to Ray, pinned to ``node_id``; returns its ObjectRef."""
        remote = self._remote_for(work, node_id)
        if work.remote_fn is not None:
            return remote.remote(*work.args, **work.kwargs)
        assert work.blob is not None
        return remote.remote(*call_arguments(work.blob, self._setup, work.args, work.kwargs))

    def _stop_call(self, ref: Any, attempt: Attempt) -> None:
        """Stop a running attempt (timeout, abandonment, cancel)."""
        ray.cancel(ref, force=True)

    def _cancel(self, attempt: Attempt) -> None:
        with self._lock:
            ref = self._refs.pop(attempt.attempt_id, None)
            if ref is None:
                self._cancel_on_launch.add(attempt.attempt_id)  # its launch is under way
                return
            owner = self._ids_of.get(ref)
            if isinstance(owner, _Members):
                owner.wanted.discard(attempt.attempt_id)
                if owner.wanted:
                    return  # other members still want the batch's result
            self._ids_of.pop(ref, None)
        try:
            self._stop_call(ref, attempt)
        except Exception as exc:
            log.debug("cancel of %s failed: %s", attempt.work.task_id, exc)

    def _remote_for(self, work: Work, node_id: str, *, batch: bool = False) -> Any:
        """The remote function with this work's options, pinned to ``node_id`` (cached)."""
        key = (node_id, work.name, work.spec.key, work.remote_fn, batch)
        remote = self._remote_cache.get(key)
        if remote is None:
            base = work.remote_fn if work.remote_fn is not None else trampoline
            if batch:
                base = batch_task
            remote = base.options(
                **work.spec.options,
                name=f"{work.name} (batch)" if batch else work.name,
                max_retries=0,
                retry_exceptions=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            self._remote_cache[key] = remote
            if len(self._remote_cache) > _REMOTE_CACHE_SIZE:
                self._remote_cache.popitem(last=False)
        return remote

    # -- the loop ------------------------------------------------------------------------

    def _step(self) -> str:
        """One round; returns "busy", "idle" (nothing to do) or "done" (shut down, drained)."""
        now = self._clock()
        if now - self._nodes_at >= self._refresh_s:
            self._refresh_nodes()
        polled = self._poll_manager()
        commands: list[Command] = []
        try:
            with self._lock:
                commands = self._feed(polled)
                if self._given_up:
                    given_up = [self._given_up.popleft() for _ in range(len(self._given_up))]
                    commands.extend(self._sched.give_up(given_up))
                due = self._sched.next_wakeup()
                if commands or now - self._ticked_at >= _TICK_S or (due is not None and due <= now):
                    # completions and submits dispatch by themselves: a round ticks only when
                    # something is due, news came in, or every _TICK_S (stragglers, capacity)
                    self._ticked_at = now
                    commands.extend(self._sched.tick())
                idle = self._sched.idle
                self._demand = self._sched.demand()
                refs = list(self._ids_of)
                wakeup = self._sched.next_wakeup()
                if idle:
                    commands.extend(self._sched.release_leases())
        finally:  # what was gathered is carried out even when a later step raised
            self._execute(commands)
        if idle:
            if self._link is not None:
                self._link.step({})  # nothing wanted any more: said at once
            with self._lock:  # a submit may have raced in: then it stays
                if self._sched.idle and not self._given_up:
                    _BUSY.discard(self)
                    self._idle_now.set()
            return "done" if self._shutdown else "idle"
        timeout = _BUSY_WAIT_S if wakeup is None else max(0.0, min(_BUSY_WAIT_S, wakeup - now))
        if not refs:
            self._kick.wait(timeout)
            self._kick.clear()
            return "busy"
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
            self._collect(ready)
        return "busy"

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
            with self._lock:
                for ref, value, error in outcomes:
                    owner = self._ids_of.pop(ref, None)
                    if owner is None:
                        continue  # cancelled: its late result is dropped
                    if isinstance(owner, _Members):
                        commands.extend(self._take_batch(owner, value, error))
                        continue
                    self._refs.pop(owner, None)
                    commands.extend(self._take_outcome(owner, value, error))
        finally:  # nothing popped is dropped: what was gathered is carried out
            self._execute(commands)

    def _take_outcome(
        self, attempt_id: int, value: Any, error: BaseException | None
    ) -> list[Command]:
        """One attempt's outcome into the scheduler (under the lock). Should ray_ft itself
        fail here, the call ends with that error instead of hanging."""
        attempt = self._sched.inflight.get(attempt_id)
        try:
            if error is None:
                return self._sched.attempt_done(attempt_id, value=value)
            commands = self._sched.attempt_done(
                attempt_id,
                error=unwrap(error),
                failure_type=classify_failure(error),
                placement=isinstance(error, ray_exc.TaskUnschedulableError),
            )
            if attempt is not None:
                commands.extend(self._worker_failed(attempt, error))
            return commands
        except Exception as exc:
            log.exception("ray_ft failed to take the outcome of attempt %s", attempt_id)
            return [] if attempt is None else self._sched.abort(attempt, exc)

    def _take_batch(
        self, members: _Members, value: Any, error: BaseException | None
    ) -> list[Command]:
        """A batch's outcome (under the lock): each wanted member's own result or
        exception; a batch that died as a whole is split by the scheduler."""
        wanted = [a for a in members.attempts if a.attempt_id in members.wanted]
        for attempt in wanted:
            self._refs.pop(attempt.attempt_id, None)
        commands: list[Command] = []
        try:
            if error is not None:
                return self._sched.batch_failed(
                    [a.attempt_id for a in wanted],
                    unwrap(error),
                    classify_failure(error),
                    placement=isinstance(error, ray_exc.TaskUnschedulableError),
                )
            unrun: list[int] = []
            for index, attempt in enumerate(members.attempts):
                if attempt.attempt_id not in members.wanted:
                    continue
                ran, result, raised = unpack_outcome(value[index])
                if not ran:
                    unrun.append(attempt.attempt_id)
                elif raised is None:
                    commands.extend(self._sched.attempt_done(attempt.attempt_id, value=result))
                else:
                    commands.extend(
                        self._sched.attempt_done(
                            attempt.attempt_id,
                            error=raised,
                            failure_type=FailureType.APPLICATION_ERROR,
                        )
                    )
            if unrun:
                commands.extend(self._sched.batch_unrun(unrun, len(members.attempts) - len(unrun)))
        except Exception as exc:
            log.exception("ray_ft failed to take the outcome of a batch")
            for attempt in wanted:
                commands.extend(self._sched.abort(attempt, exc))
        return commands

    def _worker_failed(self, attempt: Attempt, error: BaseException) -> list[Command]:
        """After the scheduler took an attempt's failure (under the lock): a hook for
        workers that can die with it (the actor pool drops the actor)."""
        return []

    def _feed(self, polled: list[Any]) -> list[Command]:
        """Hand polled nodes, exclusions and trial answers to the scheduler (under lock)."""
        commands: list[Command] = []
        for kind, payload in polled:
            if kind == "nodes":
                commands.extend(self._sched.nodes_changed(payload))
            elif kind == "draining":
                commands.extend(self._sched.draining_changed(payload))
            elif kind == "node_types":
                commands.extend(self._sched.node_types_changed(payload))
            elif kind == "exclusions":
                commands.extend(self._sched.exclusions_changed(payload))
            else:
                commands.extend(self._sched.trial_granted(*payload))
        return commands

    def _poll_manager(self) -> list[Any]:
        """Ray and manager calls, outside the lock; their results are fed in later."""
        polled: list[Any] = list(self._pending_nodes)
        self._pending_nodes = []
        nodes = self._watcher.take()
        if nodes is not None and nodes != self._sched.nodes:
            polled.append(("nodes", nodes))
        if self._link is not None:
            polled.extend(self._link.step(self._demand if self._demands else {}))
        snapshot = self._client.poll()
        if snapshot is not None:
            polled.append(("exclusions", snapshot))
        polled.extend(("trial", answer) for answer in self._client.trial_answers())
        return polled

    def _apply(self, polled: list[Any]) -> None:
        with self._lock:
            commands = self._feed(polled)
        self._execute(commands)

    def _refresh_nodes(self) -> None:
        """Ask for Ray's node table: read by the watcher thread, off the caller's thread and
        the loop (a GCS restart stalls neither); the first look is made here (never place
        blind)."""
        self._nodes_at = self._clock()
        if self._looked:
            self._watcher.want()
            return
        self._looked = True
        try:
            nodes = alive_resources()
        except Exception as exc:
            log.debug("ray.nodes() failed: %s", exc)
            return
        if nodes != self._sched.nodes:
            self._pending_nodes.append(("nodes", nodes))


def _loop(weak: weakref.ref[FaultTolerantExecutor], kick: threading.Event) -> None:
    """The executor's thread: strong reference only while there is work."""
    while True:
        executor = weak()
        if executor is None:
            return
        try:
            state = executor._step()
        except Exception:  # keep serving futures whatever one round hit
            log.exception("executor round failed")
            state = "busy"
            time.sleep(0.1)
        if state == "done":
            executor._watcher.stop()
            return
        if state == "idle":
            del executor  # idle: only the weak reference remains while we wait
            kick.wait()
            kick.clear()


class _Members:
    """The attempts of one batch task and those whose result is still wanted."""

    __slots__ = ("attempts", "wanted")

    def __init__(self, attempts: tuple[Attempt, ...], wanted: set[int]) -> None:
        self.attempts = attempts
        self.wanted = wanted


class _MapResults(Iterator[Any]):
    """Executor.map's iterator: results in order. It holds no result it has yielded
    (CPython issue 14406). When it is closed (before its first item too), collected, or
    ends by a timeout or a call's error, the calls not yet taken are given up, the one it
    was waiting on included (gh-95166): none runs on for nobody."""

    __slots__ = ("_end", "_owner", "_works")

    def __init__(
        self, owner: FaultTolerantExecutor, works: list[Work], timeout: float | None
    ) -> None:
        works.reverse()
        self._owner = owner
        self._works = works
        self._end = None if timeout is None else time.monotonic() + timeout

    def __iter__(self) -> _MapResults:
        return self

    def __next__(self) -> Any:
        if not self._works:
            raise StopIteration
        work = self._works.pop()
        try:
            left = None if self._end is None else max(0.0, self._end - time.monotonic())
            try:
                return work.future.result(left)
            finally:
                if not work.future.done():  # timed out or interrupted: nobody takes it
                    self._owner._give_up([work])
        except BaseException:
            self.close()  # as a generator's would, the iterator ends with its error
            raise
        finally:
            del work

    def close(self) -> None:
        """Give up the calls whose results were not taken."""
        works, self._works = self._works, []
        if works:
            self._owner._give_up(works)

    def __del__(self) -> None:
        self.close()


def _max_in_flight(max_in_flight: int | None, max_workers: int | None) -> int | None:
    """``max_in_flight``, or the stdlib pools' ``max_workers`` (the same thing)."""
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            msg = f"max_workers={max_workers!r} is not valid; pass a positive int or None"
            raise TypeError(msg)
        if max_workers <= 0:
            msg = "max_workers must be greater than 0"  # the stdlib pools' own words
            raise ValueError(msg)
        if max_in_flight is not None and max_in_flight != max_workers:
            msg = (
                f"max_workers={max_workers!r} and max_in_flight={max_in_flight!r} are one "
                "setting (calls at once); pass only one of them"
            )
            raise ValueError(msg)
        return max_workers
    if max_in_flight is not None and (
        isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1
    ):
        msg = f"max_in_flight={max_in_flight!r} is not valid; pass a positive int or None"
        raise ValueError(msg)
    return max_in_flight


def _wait_at_exit() -> None:
    """Before the interpreter exits, let pending calls finish, as the stdlib pools do
    (their program "will not exit until all pending futures are done executing"), within
    each executor's ``exit_timeout``; said once at WARNING. Runs before Ray's own atexit
    handler disconnects the driver (threading's exit hooks come first)."""
    busy = [e for e in list(_BUSY) if not e._idle_now.is_set()]
    if not busy or not ray.is_initialized():
        return
    bounds = [e.config.exit_timeout for e in busy]
    bound = None if None in bounds else max(b for b in bounds if b is not None)
    log.warning(
        "ray_ft: Python is exiting with %d call(s) unfinished; waiting for them %s, as "
        "concurrent.futures pools do (shutdown(cancel_futures=True) drops them instead)",
        sum(e._sched.pending() + len(e._sched.inflight) for e in busy),
        "without a bound" if bound is None else f"at most {bound:g} s",
    )
    start = time.monotonic()
    for executor in busy:
        limit = executor.config.exit_timeout
        left = None if limit is None else max(0.0, start + limit - time.monotonic())
        if not executor._idle_now.wait(left):
            log.warning("ray_ft: exiting with unfinished calls after %g s", limit or 0.0)


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
        return _OptionsView(self._parent, {**self._options, **check_options(options)})

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like FaultTolerantExecutor.map, with this view's options."""
        return self._parent._map(fn, iterables, timeout, chunksize, self._options)

    @property
    def _max_workers(self) -> int:
        """The parent's (see FaultTolerantExecutor._max_workers)."""
        return self._parent._max_workers

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A view owns nothing; shut the parent executor down instead."""


threading._register_atexit(_wait_at_exit)  # type: ignore[attr-defined]
