"""The executor's units of work, resource shapes, and the remote trampoline.

One generic remote function runs every plain callable: the callable travels as
cloudpickle bytes (pickled once per callable on the driver, unpickled once per worker),
so lambdas and builtins work and no code is re-registered per new callable.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray import cloudpickle

from ray_ft._work import Attempt, CallSpec, Shape, Work

__all__ = [
    "Attempt",
    "CallSpec",
    "Shape",
    "Work",
    "callable_blob",
    "callable_identity",
    "trampoline",
    "worker_callable",
]
_BLOB_CACHE_SIZE = 256

_blob_lock = threading.Lock()
_blobs: collections.OrderedDict[Any, bytes] = collections.OrderedDict()
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
    """cloudpickle bytes of ``fn``, cached per callable; unpicklable callables raise TypeError."""
    try:
        hash(fn)
        key: Any = fn
    except TypeError:
        key = None
    if key is not None:
        with _blob_lock:
            blob = _blobs.get(key)
            if blob is not None:
                _blobs.move_to_end(key)
                return blob
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as exc:
        msg = (
            f"cannot pickle {fn!r} to ship it to a Ray worker: {exc}; pass a function "
            "whose closure holds only picklable objects (no locks, sockets or open files)"
        )
        raise TypeError(msg) from exc
    if key is not None:
        with _blob_lock:
            _blobs[key] = blob  # holding fn keeps its id from being reused
            if len(_blobs) > _BLOB_CACHE_SIZE:
                _blobs.popitem(last=False)
    return blob


def _run_blob(blob: bytes, /, *args: Any, **kwargs: Any) -> Any:
    """Run the pickled callable. The call's arguments are the task's own top-level
    arguments, so Ray resolves ObjectRefs among them (keyword ones too) as it would for
    ``f.remote(*args, **kwargs)``; refs nested in containers stay refs, as in Ray."""
    return worker_callable(blob)(*args, **kwargs)


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
