"""The executor's units of work, resource shapes, and the remote trampoline.

One generic remote function runs every plain callable: the callable travels as
cloudpickle bytes (pickled once per callable on the driver, unpickled once per worker),
so lambdas and builtins work and no code is re-registered per new callable.
"""

from __future__ import annotations

import collections
import functools
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle

from ray_ft.core.work import Attempt, CallSpec, Shape, Work

__all__ = [
    "Attempt",
    "CallSpec",
    "Shape",
    "Work",
    "call_arguments",
    "callable_blob",
    "callable_identity",
    "initializer_blob",
    "run_setup",
    "trampoline",
    "worker_callable",
]
_BLOB_CACHE_SIZE = 256

_blob_lock = threading.Lock()
# (id of the callable, or of a bound method's instance and function) -> (weak refs, bytes)
_blobs: collections.OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], bytes]] = (
    collections.OrderedDict()
)
_dead: list[tuple[int, ...]] = []  # keys whose callable died (appended by weakref callbacks)
_setup_lock = threading.Lock()
_setups_done: set[bytes] = set()  # initializers run in this worker process
_worker_fns: collections.OrderedDict[bytes, Callable[..., Any]] = collections.OrderedDict()


def callable_identity(fn: Any) -> str:
    """Where a callable's code lives: two lambdas (both named "<lambda>") or two functions
    of one name in different modules differ; one function with different closures or
    partial arguments (one objective, several settings) is one callable."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method: its function
    fn = getattr(fn, "_function", fn)  # a Ray remote function: the Python one
    code = getattr(fn, "__code__", None)
    if code is not None:  # its code object tells two lambdas of one line apart
        return f"{fn.__module__}.{fn.__qualname__}:{code.co_firstlineno}:{id(code):x}"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def callable_blob(fn: Callable[..., Any]) -> bytes:
    """cloudpickle bytes of ``fn``, cached per callable; unpicklable callables raise TypeError.

    The cache holds the callable only weakly (a bound method: its instance and function),
    so a callable, and what its closure or instance holds, dies with its last user
    reference (CPython issue 16284); an entry is dropped when its callable dies, and an id
    reused after that finds the dead weak reference and is pickled afresh."""
    targets = _targets(fn)
    key = None if targets is None else tuple(id(t) for t in targets)
    if key is not None:
        with _blob_lock:
            _purge()
            entry = _blobs.get(key)
            if entry is not None and all(r() is t for r, t in zip(entry[0], targets or ())):
                _blobs.move_to_end(key)
                return entry[1]
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as exc:
        msg = (
            f"cannot pickle {fn!r} to ship it to a Ray worker: {exc}; pass a function "
            "whose closure holds only picklable objects (no locks, sockets or open files)"
        )
        raise TypeError(msg) from exc
    if key is not None and targets is not None:
        refs = tuple(weakref.ref(t, _on_death(key)) for t in targets)
        with _blob_lock:
            _blobs[key] = (refs, blob)
            _blobs.move_to_end(key)
            if len(_blobs) > _BLOB_CACHE_SIZE:
                _blobs.popitem(last=False)
    return blob


def _targets(fn: Any) -> tuple[Any, ...] | None:
    """What identifies a callable for the cache: a bound method (a new object on every
    attribute access) by its instance and function, anything else by itself; None for a
    callable that takes no weak reference (it is pickled on every call instead)."""
    targets = (fn.__self__, fn.__func__) if isinstance(fn, types.MethodType) else (fn,)
    try:
        for target in targets:
            weakref.ref(target)
    except TypeError:
        return None
    return targets


def _on_death(key: tuple[int, ...]) -> Callable[[Any], None]:
    return lambda _ref: _dead.append(key)


def _purge() -> None:
    """Drop the entries whose callable died (their keys were queued by weakref callbacks,
    which may run on any thread at any time and so only append; under ``_blob_lock``)."""
    while _dead:
        key = _dead.pop()
        entry = _blobs.get(key)
        if entry is not None and any(r() is None for r in entry[0]):
            del _blobs[key]


def _run_blob(blob: bytes, head: tuple[Any, ...] | None, /, *values: Any) -> Any:
    """Run the pickled callable. The call's arguments are the task's own top-level
    arguments, so Ray resolves ObjectRefs among them (keyword ones too) as it would for
    ``f.remote(*args, **kwargs)``; refs nested in containers stay refs, as in Ray.

    ``head`` is None for a call with positional arguments only, else ``(setup, names)``:
    the executor's pickled initializer (run once per worker process) and the keyword
    names, whose values are the last ``len(names)`` of ``values``. Keywords travel as
    positional values so that any name reaches the callable, ``self`` included (Ray's own
    ``.remote(self, *args, **kwargs)`` would take it)."""
    if head is None:
        return worker_callable(blob)(*values)
    setup, names = head
    if setup is not None:
        run_setup(setup)
    fn = worker_callable(blob)
    if not names:
        return fn(*values)
    cut = len(values) - len(names)
    return fn(*values[:cut], **dict(zip(names, values[cut:])))


def call_arguments(
    blob: bytes, setup: bytes | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """The trampoline's positional arguments for ``fn(*args, **kwargs)`` (see _run_blob)."""
    if setup is None and not kwargs:
        return (blob, None, *args)
    return (blob, (setup, tuple(kwargs)), *args, *kwargs.values())


def initializer_blob(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> bytes | None:
    """The pickled ``initializer(*initargs)`` an executor runs once per worker process."""
    if initializer is None:
        return None
    if not callable(initializer):
        msg = f"initializer={initializer!r} is not callable; pass a function or None"
        raise TypeError(msg)
    try:
        return cloudpickle.dumps((initializer, tuple(initargs)))
    except Exception as exc:
        msg = (
            f"cannot pickle initializer={initializer!r} with its initargs: {exc}; pass a "
            "picklable function and arguments (Ray ships them to every worker)"
        )
        raise TypeError(msg) from exc


def run_setup(setup: bytes) -> None:
    """Run an executor's initializer in this worker process, once per initializer: a
    worker serves many calls, and ProcessPoolExecutor's initializer runs once per worker.
    One that raises is tried again by the next call (that call fails with its error)."""
    if setup in _setups_done:
        return
    with _setup_lock:
        if setup in _setups_done:
            return
        initializer, initargs = cloudpickle.loads(setup)
        initializer(*initargs)
        _setups_done.add(setup)


def worker_callable(blob: bytes) -> Callable[..., Any]:
    """The callable of ``blob`` in this worker, unpickled once (bounded cache)."""
    fn = _worker_fns.get(blob)
    if fn is None:
        fn = cloudpickle.loads(blob)
        _worker_fns[blob] = fn
        if len(_worker_fns) > _BLOB_CACHE_SIZE:
            _worker_fns.popitem(last=False)
    return fn


trampoline = ray.remote(max_retries=0)(_run_blob)
