"""FaultTolerantActorPool: stateful workers (a model on a GPU, a simulator) that survive death.

The same scheduling brain as the executor, with actors for workers: each live actor is a
one-slot worker to the :class:`~ray_ft.core.scheduler.Scheduler`, so placement, retries with
backoff, timeouts, fault attribution and the manager's exclusions work as for tasks. An
actor that dies (its process killed, its node removed, frozen or excluded) has its calls
rerun on other actors and is replaced on a usable node; a call past its timeout gets its
actor killed and replaced. Replacement re-runs the constructor: state an actor built up
after its constructor is not restored.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
import ray.exceptions as ray_exc
from ray import cloudpickle

from ray_ft import raycompat
from ray_ft._errors import invalid
from ray_ft.config import FTConfig
from ray_ft.core.commands import Exclusions
from ray_ft.core.events import (
    DrainingChanged,
    Event,
    ExclusionsChanged,
    NodesChanged,
    WorkersBroken,
)
from ray_ft.core.work import Attempt, Work
from ray_ft.failures import FailureEvent
from ray_ft.nodes import alive_nodes
from ray_ft.runtime.executor import FaultTolerantExecutor
from ray_ft.runtime.workers import WorkerGoneError

__all__ = ["ActorWorkers", "FaultTolerantActorPool"]

log = logging.getLogger(__name__)

_ONE_SLOT = {"CPU": 1.0}  # each actor runs one call at a time
_CALL_OPTIONS = {"num_cpus": 1}
_NODE_TABLE_S = 1.0
# the stdlib pools' arguments and what an actor pool takes instead
_STDLIB_INSTEAD = {
    "max_workers": "size= (the number of actors, each running one call at a time)",
    "initializer": "the set-up in the class's constructor (it runs once per actor)",
    "initargs": "args= and kwargs= (the constructor's arguments)",
}


@dataclasses.dataclass(slots=True)
class _Actor:
    key: str
    handle: Any
    ready: Any  # ObjectRef of (node id, pid) until the constructor has run
    node_id: str | None = None
    pid: int | None = None
    dead: bool = False


def _call_method(instance: Any, name: str, names: tuple[str, ...], *values: Any) -> Any:
    """Call ``instance.name`` with keywords of any name (the last ``len(names)`` values).
    Ray wraps an actor's methods in a tracing shim whose first parameter is ``self``; the
    user's own function under it (one step, marked by Ray) takes the keywords instead."""
    cut = len(values) - len(names)
    args, kwargs = values[:cut], dict(zip(names, values[cut:]))
    method = inspect.getattr_static(type(instance), name)
    if isinstance(method, (staticmethod, classmethod)):
        return getattr(instance, name)(*args, **kwargs)
    return raycompat.user_method(method)(instance, *args, **kwargs)


def _whereabouts(_self: Any) -> tuple[str, int]:
    return ray.get_runtime_context().get_node_id(), os.getpid()


class ActorWorkers:
    """The pool's actors as the loop's workers: each live actor is a one-slot worker, named
    by its key (``actor-N``); dead ones are dropped and replaced on a usable node."""

    cancel_kills_worker = True  # an actor call cannot be cancelled: the actor is killed
    batches = False  # an actor runs its calls one by one: no packing
    demands = False  # its calls wait for its own actors, not for new nodes
    refresh_s = 0.1

    def __init__(
        self,
        actor_class: Any,
        name: str,
        size: int,
        ctor: tuple[tuple[Any, ...], dict[str, Any]],
        actor_options: dict[str, Any],
        max_init_failures: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.replaced = 0
        self.broken: BaseException | None = None  # the constructor keeps failing
        self.actors: dict[str, _Actor] = {}
        # the actor table is changed by the loop and by callers' threads (submit, stats)
        self.lock = threading.RLock()
        self._actor_class = actor_class
        self._name = name
        self._ctor = ctor
        self._actor_options = actor_options
        self._max_init_failures = max_init_failures
        self._clock = clock
        self._keys = itertools.count(1)
        self._init_failures = 0
        self._node_exclusions = Exclusions()
        self._draining_nodes: dict[str, float] = {}  # node -> deadline: actors there move
        self._table_at = -float("inf")
        self._news: list[Event] = []
        with self.lock:
            self._top_up()

    @property
    def live(self) -> int:
        with self.lock:
            return sum(1 for a in self.actors.values() if a.node_id and not a.dead)

    # -- the Workers protocol --------------------------------------------------------------

    def target(self, fn: Any, is_remote: bool) -> tuple[Any, bytes | None]:
        return fn, None  # a _MethodCall: the method's name travels, not code

    def start(self, work: Work, worker_id: str) -> Any:
        actor = self.actors.get(worker_id)
        if actor is None or actor.dead:  # killed or dropped since the scheduler chose it
            msg = f"{worker_id} is gone"
            raise WorkerGoneError(msg)
        if "self" in work.kwargs:  # Ray's .remote(self, ...) would take it: pass it on
            names, values = tuple(work.kwargs), tuple(work.kwargs.values())
            return actor.handle.__ray_call__.remote(
                _call_method, work.remote_fn.name, names, *work.args, *values
            )
        return getattr(actor.handle, work.remote_fn.name).remote(*work.args, **work.kwargs)

    def start_batch(self, attempts: tuple[Attempt, ...]) -> Any:
        msg = "an actor pool packs no calls"
        raise NotImplementedError(msg)

    def stop(self, ref: Any, attempt: Attempt) -> None:
        # an actor call cannot be force-cancelled: the actor goes, a new one takes its place
        actor = self.actors.get(attempt.node_id)
        if actor is not None:
            self._kill(actor)

    def died(self, attempt: Attempt, error: BaseException) -> str | None:
        died = isinstance(error, ray_exc.RayActorError) and not isinstance(
            error, ray_exc.ActorUnavailableError
        )
        actor = self.actors.get(attempt.node_id)
        if not died or actor is None:
            return None
        actor.dead = True
        return "lost its actor"

    def node_events(self, events: list[FailureEvent]) -> list[FailureEvent]:
        """The manager keeps breakers per node: name each actor's node, not the actor."""
        out = []
        for event in events:
            actor = self.actors.get(event.worker_id or "")
            node_id = None if actor is None else actor.node_id
            out.append(dataclasses.replace(event, worker_id=node_id))
        return out

    def poll(self, due: bool, current: dict[str, dict[str, float]]) -> list[Event]:
        """Collect constructors, drop the dead, start replacements (under the actors' own
        lock: callers' threads come here too)."""
        if not due:
            return []
        with self.lock:
            self._follow()
            news, self._news = self._news, []
            workers = {k: dict(_ONE_SLOT) for k, a in self.actors.items() if a.node_id}
        if workers != current:
            news.append(NodesChanged(workers))
        return news

    def translate(self, polled: list[Event]) -> list[Event]:
        """The manager's node verdicts and drain notices, applied to the actors there."""
        out: list[Event] = []
        for event in polled:
            if isinstance(event, ExclusionsChanged):
                with self.lock:
                    self._node_exclusions = event.snapshot
                    event = ExclusionsChanged(self._actor_exclusions(event.snapshot))
            elif isinstance(event, DrainingChanged):  # replacements start now, calls move off
                with self.lock:
                    deadlines = event.deadlines
                    self._draining_nodes = dict(deadlines)
                    by_actor = {k: a.node_id for k, a in self.actors.items() if a.node_id}
                    event = DrainingChanged(
                        {k: deadlines[n] for k, n in by_actor.items() if n in deadlines}
                    )
                    self._top_up()
            out.append(event)
        return out

    def close(self) -> None:
        """Nothing runs on its own thread."""

    def kill_all(self) -> None:
        with self.lock:
            actors = list(self.actors.values())
        for actor in actors:
            self._kill(actor)

    # -- actors --------------------------------------------------------------------------

    def _follow(self) -> None:
        pending = {a.ready: a for a in self.actors.values() if a.node_id is None and not a.dead}
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                self._constructed(pending[ref], ref)
        failed_nodes = self._node_exclusions.failed | self._node_exclusions.dead
        for actor in list(self.actors.values()):
            if not actor.dead and actor.node_id in failed_nodes:
                self._kill(actor)  # its node was declared failed: start over elsewhere
        now = self._clock()
        if now - self._table_at >= _NODE_TABLE_S:  # a GCS call: once a second
            self._table_at = now
            alive = alive_nodes()
            for actor in list(self.actors.values()):
                if actor.node_id is not None and actor.node_id not in alive:
                    actor.dead = True
        for key in [k for k, a in self.actors.items() if a.dead]:
            del self.actors[key]
        if self.broken is None:
            self._top_up()

    def _actor_exclusions(self, nodes: Exclusions) -> Exclusions:
        def on(node_ids: frozenset[str]) -> frozenset[str]:
            return frozenset(k for k, a in self.actors.items() if a.node_id in node_ids)

        return Exclusions(
            excluded=on(nodes.excluded | frozenset(n for n, _ in nodes.half_open)),
            failed=on(nodes.failed),
            dead=on(nodes.dead),
            degraded=on(nodes.degraded),
        )

    def _top_up(self) -> None:
        """Start actors until ``size`` are alive or starting off draining nodes, never on
        an excluded or draining node (an actor on a draining node is replaced before its
        node goes, and dies with it)."""
        excluded = sorted(self._node_exclusions.excluded | self._draining_nodes.keys())
        options = raycompat.avoid_nodes(dict(self._actor_options, max_restarts=0), excluded)
        draining = self._draining_nodes
        staying = sum(1 for a in self.actors.values() if a.node_id not in draining)
        while staying < self.size:
            staying += 1
            key = f"actor-{next(self._keys)}"
            args, kwargs = self._ctor
            handle: Any = self._actor_class.options(**options).remote(*args, **kwargs)
            ready = handle.__ray_call__.remote(_whereabouts)
            self.actors[key] = _Actor(key, handle, ready)

    def _constructed(self, actor: _Actor, ref: Any) -> None:
        try:
            actor.node_id, actor.pid = ray.get(ref)
            self._init_failures = 0
            if int(actor.key.split("-")[1]) > self.size:
                self.replaced += 1
        except Exception as exc:
            actor.dead = True
            self._init_failures += 1
            log.warning("%s of %s did not start: %s", actor.key, self._name, exc)
            if self._init_failures >= self._max_init_failures and not any(
                a.node_id for a in self.actors.values() if not a.dead
            ):
                msg = (
                    f"{self._name}'s constructor failed {self._init_failures} times "
                    f"in a row; last: {str(exc).splitlines()[0]}"
                )
                error = RuntimeError(msg)
                error.__cause__ = exc
                self.broken = error
                self._news.append(WorkersBroken(error))  # the queued calls fail with it

    def _kill(self, actor: _Actor) -> None:
        actor.dead = True
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception as exc:
            log.debug("could not kill %s: %s", actor.key, exc)


class FaultTolerantActorPool(FaultTolerantExecutor):
    """A ``concurrent.futures.Executor`` over ``size`` actors of the plain class ``cls``.

    ``submit(method, *args, **kwargs)`` calls ``method`` (an unbound method of ``cls``, e.g.
    ``Simulator.evaluate``, or its name) on a free live actor, so
    ``optimize(Simulator.evaluate, ga, executor=pool)`` works. ``actor_options`` are Ray
    actor options (``num_gpus=1``, ``num_cpus``, ``memory``, ``resources``...). The
    executor's loop runs over the pool's :class:`ActorWorkers`.
    """

    def __init__(
        self,
        cls: type,
        *,
        size: int,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        config: FTConfig | dict[str, Any] | None = None,
        manager: Any = None,
        clock: Callable[[], float] = time.monotonic,
        **actor_options: Any,
    ) -> None:
        for key, instead in _STDLIB_INSTEAD.items():
            if key in actor_options:
                msg = f"{key}= is a process pool's argument; for an actor pool pass {instead}"
                raise TypeError(msg)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise invalid("size", size, "the number of actors, an int >= 1")
        target = getattr(cls, "__ray_metadata__", None)
        plain = target.modified_class if target is not None else cls
        if not inspect.isclass(plain):
            msg = f"{cls!r} is not a class; pass the plain class, e.g. Simulator"
            raise TypeError(msg)
        try:
            cloudpickle.dumps((args, kwargs or {}))
        except Exception as exc:
            msg = (
                f"the constructor arguments of {plain.__name__} cannot be pickled ({exc}); "
                "pass picklable arguments (Ray ships them to every actor it starts)"
            )
            raise TypeError(msg) from exc
        self.cls = plain
        self.size = size
        if not ray.is_initialized():
            ray.init()
        coerced = FTConfig.coerce(config)
        self._workers = ActorWorkers(
            ray.remote(plain) if target is None else cls,
            plain.__name__,
            size,
            (tuple(args), dict(kwargs or {})),
            {k: v for k, v in actor_options.items() if k not in ("max_restarts", "label_selector")},
            coerced.max_retries,
            clock,
        )
        super().__init__(
            coerced, manager=manager, queue_depth=1, clock=clock, _workers=self._workers
        )

    # -- the Executor API ----------------------------------------------------------------

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Call ``fn`` (a method of the pool's class, or its name) on a free live actor."""
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", None)
        if not isinstance(name, str) or not callable(getattr(self.cls, name, None)):
            public = sorted(n for n in dir(self.cls) if not n.startswith("_"))
            msg = (
                f"{fn!r} is not a method of {self.cls.__name__}; pass one of "
                f"{', '.join(public)} (the unbound method, e.g. "
                f"{self.cls.__name__}.{public[0] if public else 'method'}, or its name)"
            )
            raise ValueError(msg)
        if self._workers.broken is not None:
            raise self._workers.broken
        return self._submit(_MethodCall(name), args, kwargs, _CALL_OPTIONS)

    def map(
        self,
        fn: Any,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like Executor.map over the pool's actors (each call checked as ``submit`` does;
        an actor runs its calls one by one, so ``chunksize`` packs nothing)."""
        return cf.Executor.map(self, fn, *iterables, timeout=timeout)

    def for_generations(self) -> cf.Executor:
        """No backups by default: the losing copy's actor would have to be killed (an
        actor call cannot be cancelled); ``speculation=True`` in the config allows them."""
        return self

    def stats(self) -> dict[str, Any]:
        """The executor's counts plus the pool's: size, live, replaced."""
        stats = super().stats()
        stats.update(size=self.size, live=self._workers.live, replaced=self._workers.replaced)
        return stats

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Finish (or cancel) the work, then kill the actors."""
        super().shutdown(wait, cancel_futures=cancel_futures)
        if wait and self._loop.ray_up():  # after ray.shutdown() a kill would start a new Ray
            self._workers.kill_all()


@dataclasses.dataclass(frozen=True, slots=True)
class _MethodCall:
    """Stands for 'call this method' where the executor expects a callable."""

    name: str

    @property
    def __name__(self) -> str:  # the task and future names follow the method's
        return self.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never run
        msg = "a pool call runs on an actor"
        raise RuntimeError(msg)
