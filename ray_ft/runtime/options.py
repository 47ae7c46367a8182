"""Task options as the executor takes them: checked at submit, with errors that say what
to pass instead; the user's own exception unwrapped from Ray's (no state, no Ray calls)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ray.exceptions as ray_exc

from ray_ft._errors import invalid

__all__ = [
    "OWNED",
    "PASSTHROUGH",
    "callable_name",
    "check_options",
    "check_remote_function",
    "check_values",
    "options_key",
    "unwrap",
]

PASSTHROUGH = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "accelerator_type",
    "runtime_env",
    "name",
}
OWNED = {"max_retries", "retry_exceptions", "scheduling_strategy", "max_calls"}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    for key, value in options.items():
        if key in OWNED:
            msg = (
                f"option {key!r} is managed by ray_ft; configure retries through FTConfig "
                "(max_retries, retry_on, retry_exceptions) and let ray_ft place tasks"
            )
            raise ValueError(msg)
        if key == "timeout":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise invalid("timeout", value, "seconds > 0 or None")
            continue
        if key == "speculation":
            if value is not None and not isinstance(value, bool):
                raise invalid("speculation", value, "True, False or None")
            continue
        if key not in PASSTHROUGH:
            msg = (
                f"unknown task option {key!r}; pass one of "
                f"{', '.join(sorted(PASSTHROUGH | {'timeout', 'speculation'}))}"
            )
            raise ValueError(msg)
    check_values(options)
    return dict(options)


def check_values(options: dict[str, Any]) -> None:
    """Resource amounts are finite numbers >= 0, as Ray requires; say which one is not."""
    amounts: dict[str, Any] = {
        k: options[k] for k in ("num_cpus", "num_gpus", "memory") if k in options
    }
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise invalid("resources", resources, "a dict such as {'TPU': 1}")
        amounts.update({f"resources[{name!r}]": v for name, v in resources.items()})
    for key, value in amounts.items():
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise invalid(key, value, "a finite number >= 0")


def check_remote_function(fn: Any) -> None:
    """Refuse what one result per call cannot carry: several returns, or a generator."""
    num_returns = fn._default_options.get("num_returns", 1)
    if getattr(fn, "_is_generator", False) or num_returns not in (1, None):
        what = (
            "a generator"
            if getattr(fn, "_is_generator", False)
            else (f"num_returns={num_returns!r}")
        )
        msg = (
            f"{callable_name(fn)} is a remote function with {what}; the executor gives one "
            "result per call: return a tuple or list from a function with num_returns=1"
        )
        raise ValueError(msg)


def options_key(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def callable_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", None)  # functools.partial
    target = inner if inner is not None else fn
    remote_name = getattr(getattr(target, "_function", None), "__name__", None)
    return str(remote_name or getattr(target, "__name__", None) or type(target).__name__)


def unwrap(error: BaseException) -> BaseException:
    """The user's own exception inside a RayTaskError, with the remote traceback as a note."""
    if isinstance(error, ray_exc.RayTaskError) and error.cause is not None:
        cause = error.cause
        add_note = getattr(cause, "add_note", None)
        notes = getattr(cause, "__notes__", [])
        if add_note is not None and not any(n.startswith("remote traceback") for n in notes):
            add_note(f"remote traceback:\n{error}")
        return cause
    return error
