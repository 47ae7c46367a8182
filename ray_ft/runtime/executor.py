"""FaultTolerantExecutor: a concurrent.futures.Executor whose work runs as Ray tasks.

The public face of :class:`~ray_ft.runtime.loop.Loop` (the Ray side of the pure
:class:`~ray_ft.core.scheduler.Scheduler`) over Ray tasks pinned to nodes
(:class:`~ray_ft.runtime.workers.TaskWorkers`). Pinning every attempt to one node
(NodeAffinity, soft=False) is what lets ray_ft abandon the attempts of a frozen node, send
only trial tasks to a HALF_OPEN node and keep a slow node from setting the end of a batch.
Ray runs each attempt once (max_retries=0); retries wait their backoff on the scheduler's
timer heap.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray

from ray_ft import raycompat
from ray_ft._errors import invalid
from ray_ft.checkpoints.storage import storage_root
from ray_ft.config import FTConfig
from ray_ft.core.batching import MAX_BATCH
from ray_ft.core.commands import CapacityError
from ray_ft.core.events import ExclusionsChanged
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec, Work
from ray_ft.manager.state import FaultToleranceManager
from ray_ft.metrics import get_metrics
from ray_ft.runtime.busy import BUSY
from ray_ft.runtime.cluster_link import ColdWatch, ElasticLink
from ray_ft.runtime.loop import Loop
from ray_ft.runtime.manager_client import ActorManagerClient, LocalManagerClient, ManagerClient
from ray_ft.runtime.options import (
    PASSTHROUGH,
    callable_name,
    check_options,
    check_remote_function,
    check_values,
    options_key,
)
from ray_ft.runtime.remote import callable_identity, initializer_blob
from ray_ft.runtime.storage_check import check_storage_setting, warn_if_node_local
from ray_ft.runtime.workers import TaskWorkers, WorkerGoneError, Workers

__all__ = ["CapacityError", "FaultTolerantExecutor", "WorkerGoneError"]

log = logging.getLogger(__name__)

_NO_OPTIONS: dict[str, Any] = {}  # plain submit(): the executor's own CallSpec
_SPEC_CACHE_SIZE = 256
# An existing manager may hold exclusions: a warm one answers in milliseconds, and the
# first placement waits for it this long at most (a new one knows nothing yet: no wait)
_WARM_SNAPSHOT_S = 1.0


class _Calls(cf.Executor):
    """``submit`` and ``map`` of the executor and of its options views: each hands its
    calls to one executor with its own Ray options."""

    def _calls_go_to(self) -> tuple[FaultTolerantExecutor, dict[str, Any]]:
        raise NotImplementedError

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future. Unpicklable input raises here."""
        executor, options = self._calls_go_to()
        return executor._submit(fn, args, kwargs, options)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like Executor.map; every call is queued at once. ``chunksize=None`` packs tiny
        calls by their pace (docs/internals.md, batching); an int packs that many per Ray task."""
        executor, options = self._calls_go_to()
        return executor._map(fn, iterables, timeout, chunksize, options)


class FaultTolerantExecutor(_Calls):
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
    ``_workers`` is where attempts run (default: Ray tasks; the actor pool passes its actors).
    """

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
        _workers: Workers | None = None,
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
            raise invalid("queue_depth", queue_depth, "a positive int")
        check_storage_setting(self.config.storage)  # a bad URI fails before any work
        if not ray.is_initialized():
            ray.init()
        raycompat.warn_if_unsupported()
        self.max_in_flight = max_in_flight
        self.queue_depth = queue_depth
        self._clock = clock
        client: ManagerClient
        existed = True  # a handle passed in: it may hold exclusions
        if manager is False:
            client = LocalManagerClient(FaultToleranceManager(self.config, clock=clock))
        else:
            if manager is None:
                from ray_ft.actors.manager_actor import ensure_manager

                manager, existed = ensure_manager(config if config is not None else {})
            client = ActorManagerClient(manager, clock=clock)
        # a new manager holds nothing yet: launch on Ray's alive nodes at once and apply
        # its snapshot when it comes (the loop's poll asks for it); one that does not answer
        # within the bound is still starting, and is taken as new
        first = client.fetch(timeout=_WARM_SNAPSHOT_S) if existed else None
        self.manager = manager if manager is not False else None
        workers = _workers if _workers is not None else TaskWorkers(self._setup)
        sched = Scheduler(
            self.config,
            clock=clock,
            queue_depth=queue_depth,
            max_in_flight=max_in_flight,
            metrics=get_metrics(),
            cancel_kills_worker=workers.cancel_kills_worker,
            batching=workers.batches and self.config.batching,
            home=ray.get_runtime_context().get_node_id(),
        )
        # the manager sums every driver's demand into the autoscaler's one request
        # (a new one does so from its first view on: until then the executor reads the drain
        # list and asks for its own demand itself, as plain Ray's raylets would show them)
        link = None
        if manager is not False:
            link = ElasticLink(manager, clock=clock, cold=None if first else ColdWatch())
        self._loop = Loop(
            self.config,
            sched,
            workers,
            client,
            link,
            clock=clock,
            thread_name=f"{thread_name_prefix}ray_ft-executor",
        )
        self._specs: OrderedDict[tuple[Any, ...], CallSpec] = OrderedDict()
        self._specs_lock = threading.Lock()
        self._default_spec = CallSpec.of(self._task_options, self.config.task_timeout)
        self._ids = itertools.count(1)
        polled = self._loop.poll(force=True)  # the first look at the nodes, made here
        self._loop.apply([*polled, *([ExclusionsChanged(first)] if first else [])])
        self._loop.thread.start()
        threading.Thread(  # a GCS call: off the way of the first calls
            target=self.check_storage,
            args=(storage_root(self.config.storage),),
            name="ray_ft-storage-check",
            daemon=True,
        ).start()

    # -- the Executor API ----------------------------------------------------------------

    def _calls_go_to(self) -> tuple[FaultTolerantExecutor, dict[str, Any]]:
        return self, _NO_OPTIONS

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

    def check_storage(self, location: str) -> str | None:
        """Warn once if ``location`` (checkpoints, the manager's state) is on one machine's
        disk while the cluster spans several; the warning, or None."""
        try:
            return warn_if_node_local(location, storage=self.config.storage)
        except Exception as exc:  # a check, never a failure: the GCS may be away
            log.debug("could not check where %s lives: %s", location, exc)
            return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; optionally cancel queued futures and wait for the rest."""
        self._loop.close(cancel_futures=cancel_futures)
        thread = self._loop.thread
        if wait and thread is not threading.current_thread():
            while thread.is_alive():
                thread.join(0.5)
                if not self._loop.ray_up() and self._loop.idle_now.is_set():
                    break  # Ray was shut down: every call ended; its thread may be stuck in Ray

    def _give_up(self, works: list[Work]) -> None:
        """The caller will not take these calls' results (its map() iterator was closed,
        collected or timed out); see Loop.give_up."""
        self._loop.give_up(works)

    def stats(self) -> dict[str, Any]:
        """Counts of this executor's work: submitted, succeeded, failed, retries, and more."""
        loop = self._loop
        if loop.sched.idle:  # an idle loop follows neither its workers nor the manager
            loop.look()
        with loop.lock:
            return loop.sched.summary()

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
            raise invalid("chunksize", chunksize, "a positive int, or None (adaptive)")
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
        remote_fn, blob = self._loop.workers.target(fn, is_remote)
        kind = f"{name}#{callable_identity(fn)}"
        works = [
            Work(
                f"{name}-{next(self._ids)}",
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
            for args, kwargs in calls
        ]
        self._loop.submit(works, raise_for=works[0] if raise_launch and len(works) == 1 else None)
        return works

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
        with self._specs_lock:
            spec = self._specs.get(key)
            if spec is not None:
                self._specs.move_to_end(key)
                return spec
        spec = CallSpec.of({**own, **self._task_options, **options}, self.config.task_timeout)
        with self._specs_lock:
            self._specs[key] = spec
            if len(self._specs) > _SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return spec


class _MapResults(Iterator[Any]):
    """Executor.map's iterator: results in order. It holds no result it has yielded
    (CPython issue 14406). Like the stdlib's generator: one never advanced gives up nothing
    when it is closed or collected (its calls run, and ``shutdown(wait=True)`` waits for
    them: ``ex.map(f, xs)`` alone fires the work, CPython issue 11777); once advanced, when
    it is closed, collected, or ends by a timeout or a call's error, the calls not yet
    taken are given up, the one it was waiting on included (gh-95166)."""

    __slots__ = ("_end", "_owner", "_started", "_works")

    def __init__(
        self, owner: FaultTolerantExecutor, works: list[Work], timeout: float | None
    ) -> None:
        works.reverse()
        self._owner = owner
        self._works = works
        self._end = None if timeout is None else time.monotonic() + timeout
        self._started = False

    def __iter__(self) -> _MapResults:
        return self

    def __next__(self) -> Any:
        self._started = True
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
        """Give up the calls whose results were not taken (none, if never advanced)."""
        works, self._works = self._works, []
        if works and self._started:
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
        raise invalid("max_in_flight", max_in_flight, "a positive int or None")
    return max_in_flight


def _wait_at_exit() -> None:
    """Before the interpreter exits, let pending calls finish, as the stdlib pools do
    (their program "will not exit until all pending futures are done executing"), within
    each executor's ``exit_timeout``; said once at WARNING. Runs before Ray's own atexit
    handler disconnects the driver (threading's exit hooks come first)."""
    busy = [e for e in list(BUSY) if not e.idle_now.is_set()]
    if not busy or not ray.is_initialized():
        return
    bounds = [e.config.exit_timeout for e in busy]
    bound = None if None in bounds else max(b for b in bounds if b is not None)
    log.warning(
        "ray_ft: Python is exiting with %d call(s) unfinished; waiting for them %s, as "
        "concurrent.futures pools do (shutdown(cancel_futures=True) drops them instead)",
        sum(e.sched.pending() + len(e.sched.inflight) for e in busy),
        "without a bound" if bound is None else f"at most {bound:g} s",
    )
    start = time.monotonic()
    for executor in busy:
        limit = executor.config.exit_timeout
        left = None if limit is None else max(0.0, start + limit - time.monotonic())
        if not executor.idle_now.wait(left):
            log.warning("ray_ft: exiting with unfinished calls after %g s", limit or 0.0)


class _OptionsView(_Calls):
    """The executor with per-call options; shutting the view down does nothing."""

    def __init__(self, parent: FaultTolerantExecutor, options: dict[str, Any]) -> None:
        self._parent = parent
        self._options = options

    def _calls_go_to(self) -> tuple[FaultTolerantExecutor, dict[str, Any]]:
        return self._parent, self._options

    def options(self, **options: Any) -> _OptionsView:
        """A view with more options layered on these."""
        return _OptionsView(self._parent, {**self._options, **check_options(options)})

    @property
    def _max_workers(self) -> int:
        """The parent's (see FaultTolerantExecutor._max_workers)."""
        return self._parent._max_workers

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A view owns nothing; shut the parent executor down instead."""


threading._register_atexit(_wait_at_exit)  # type: ignore[attr-defined]
