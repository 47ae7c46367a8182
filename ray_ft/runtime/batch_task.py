"""The batch task (Ray side of ``ray_ft.core.batching``): run every member, catch per member."""

from __future__ import annotations

import dataclasses
import sys
import traceback
from typing import Any

import ray
from ray import cloudpickle

from ray_ft.core.work import Work
from ray_ft.runtime.remote import run_setup, worker_callable

__all__ = ["RESULT_BUDGET", "batch_task", "pack", "unpack_outcome"]

# results a batch holds in its worker before it returns: the members not run by then go
# back to the driver (run again, uncharged, in smaller batches)
RESULT_BUDGET = 64 * 2**20


@dataclasses.dataclass(frozen=True, slots=True)
class _Ref:
    """Stands for the batch task's ``index``-th extra argument (an ObjectRef Ray resolves)."""

    index: int


def pack(works: list[Work]) -> tuple[list[tuple[tuple[Any, ...], dict[str, Any]]], list[Any]]:
    """The members' arguments, top-level ObjectRefs swapped for ``_Ref`` placeholders, and
    the refs themselves (to pass as the batch task's own top-level arguments)."""
    refs: list[Any] = []

    def swap(value: Any) -> Any:
        if isinstance(value, ray.ObjectRef):
            refs.append(value)
            return _Ref(len(refs) - 1)
        return value

    members = [
        (tuple(swap(a) for a in w.args), {k: swap(v) for k, v in w.kwargs.items()}) for w in works
    ]
    return members, refs


def _run_batch(
    blob: bytes,
    setup: bytes | None,
    members: list[tuple[tuple[Any, ...], dict[str, Any]]],
    *resolved: Any,
) -> list[tuple[bool | None, Any]]:
    """Run the members; each one's outcome is ``(True, value)``, ``(False, exception)``,
    or ``(None, None)`` for a member not run because the results held reached
    ``RESULT_BUDGET`` (a batch never holds much more than that in its worker).
    ``setup``: the executor's initializer, run once per worker process first."""
    if setup is not None:
        run_setup(setup)
    fn = worker_callable(blob)

    def put(value: Any) -> Any:
        return resolved[value.index] if isinstance(value, _Ref) else value

    outcomes: list[tuple[bool | None, Any]] = []
    held = 0
    for args, kwargs in members:
        if held > RESULT_BUDGET:
            outcomes.append((None, None))
            continue
        try:
            value = fn(*(put(a) for a in args), **{k: put(v) for k, v in kwargs.items()})
        except Exception as exc:
            outcomes.append((False, _shippable(exc)))
        else:
            outcomes.append((True, value))
            held += _size(value)
    return outcomes


def _size(value: Any) -> int:
    """Bytes a result holds, roughly: an array's buffer, else the object's own size."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return sys.getsizeof(value)
    except TypeError:
        return 0


def _shippable(exc: Exception) -> Exception:
    """The member's exception with its traceback as a note; one that does not pickle is
    replaced by a RuntimeError that names it (the member still fails with its message)."""
    text = "".join(traceback.format_exception(exc))
    exc.add_note(f"remote traceback (in a batch):\n{text}")
    try:
        cloudpickle.dumps(exc)
    except Exception:
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc} (the exception does not pickle)")
        stand_in.add_note(f"remote traceback (in a batch):\n{text}")
        return stand_in
    return exc


def unpack_outcome(outcome: Any) -> tuple[bool, Any, BaseException | None]:
    """One member's (ran, value, error) from what the batch task returned for it."""
    ok, payload = outcome
    if ok is None:
        return False, None, None
    return (True, payload, None) if ok else (True, None, payload)


batch_task = ray.remote(max_retries=0)(_run_batch)
