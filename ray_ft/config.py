"""FTConfig: every ray_ft setting in one frozen, validated dataclass.

Bad settings are refused at construction with a ValueError that names the key, the value
and what to pass instead, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ray_ft._errors import invalid
from ray_ft.failures import SYSTEM_FAILURES, FailureType

__all__ = ["CLUSTER_KEYS", "JITTER_MODES", "FTConfig"]

JITTER_MODES = ("full", "equal", "none")


@dataclasses.dataclass(frozen=True, slots=True)
class FTConfig:
    """Fault-tolerance settings. Each field's docstring is its entry in
    ``docs/configuration.md`` (made by ``make docs``; a test fails when it is stale)."""

    max_retries: int = 3
    """Failures a call may have; the max_retries-th is final (3 means 3 attempts)."""
    retry_delay: float = 5.0
    """Base delay (s) before the first retry."""
    backoff_multiplier: float = 2.0
    """The delay grows by this factor per attempt."""
    max_retry_delay: float = 60.0
    """Cap on one delay (s)."""
    jitter: str = "full"
    """``"full"`` (uniform in [0, d]), ``"equal"`` (d/2 + uniform in [0, d/2]) or ``"none"``."""
    retry_on: frozenset[FailureType] = SYSTEM_FAILURES
    """The failure types that are retried (``["node_died", ...]``)."""
    retry_exceptions: tuple[type[BaseException], ...] = ()
    """Application exception classes retried anyway."""
    task_timeout: float | None = None
    """Seconds one attempt may run before it is killed and retried (None: no limit)."""
    health_check_interval: float = 30.0
    """Seconds between health checks of a node (psutil, NVML)."""
    probe_timeout: float = 10.0
    """Seconds a health check may take before it counts as missed."""
    probe_failure_threshold: int = 3
    """Consecutive missed health checks before a node is declared failed."""
    checkpoint_interval: int = 10
    """Generations between checkpoints in ``optimize()``."""
    failure_window: float = 3600.0
    """Seconds over which a node's failures are counted."""
    worker_failure_threshold: int = 3
    """More node failures than this in the window open the node's breaker."""
    breaker_timeout: float = 300.0
    """Seconds a breaker stays OPEN before HALF_OPEN."""
    half_open_max_calls: int = 1
    """Trial calls a HALF_OPEN node takes at once."""
    capacity_wait_timeout: float = 600.0
    """Seconds with no usable capacity before pending work fails (``CapacityError``)."""
    cpu_threshold: float | None = None
    """Opt-in: percent CPU above which a node is degraded (busy is not broken; None: off)."""
    memory_threshold: float = 95.0
    """Percent memory in use above which a node is degraded."""
    disk_threshold: float = 95.0
    """Percent disk in use above which a node is degraded."""
    gpu_temp_threshold: float = 85.0
    """GPU temperature (°C) above which a node is degraded, unless NVML knows the GPU's own limits.
    """
    gpu_memory_threshold: float | None = None
    """Opt-in: percent of GPU memory in use above which a node is degraded (TF and JAX preallocate;
    None: off).
    """
    liveness_interval: float = 1.0
    """Seconds between heartbeats to each node's probe."""
    liveness_phi_threshold: float = 8.0
    """Suspicion (phi accrual) above which a silent node is failed."""
    liveness_timeout_floor: float = 2.0
    """No node is failed sooner than this many seconds after its last answer."""
    probe_start_delay: float = 5.0
    """A new manager on a fresh cluster starts its probes this long after itself, so the job's
    first calls get their worker processes first (a restarted manager starts them at once).
    """
    speculation: bool | None = None
    """Backups for stragglers: None is off for the executor and on in ``optimize()``; True or False
    everywhere.
    """
    speculation_quantile: float = 0.75
    """Share of a batch that must be done before its stragglers are backed up."""
    speculation_multiplier: float = 1.5
    """A straggler runs longer than this times the batch's median runtime ..."""
    speculation_min_runtime: float = 1.0
    """... and longer than this many seconds."""
    speculation_max_fraction: float = 0.25
    """Share of the free slots backups may take (at least one)."""
    oom_memory_multiplier: float = 2.0
    """An out-of-memory retry asks for this times the memory it had."""
    batching: bool = True
    """Pack queued calls of one callable that take a few ms or less into one Ray task."""
    exit_timeout: float | None = 600.0
    """Seconds Python's exit waits for unfinished calls, as the stdlib pools wait (None: no bound).
    """
    storage: str | None = None
    """Where relative checkpoint folders and the manager's state go: a folder or a ``pyarrow.fs``
    URI (``s3://bucket/prefix``). None: ``$RAY_FT_STORAGE``, else ``~/ray_ft`` on the driver's
    machine. On a cluster of several machines use a bucket or a shared mount, so a replaced head
    finds them.
    """

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, (kind, low, low_inclusive) in _NUMERIC.items():
            value = getattr(self, name)
            if name in _OPTIONAL and value is None:
                continue
            set_(self, name, _check_number(name, value, kind, low, low_inclusive))
        if self.speculation is not None and not isinstance(self.speculation, bool):
            fix = "True, False, or None (off for the executor, on in optimize())"
            raise invalid("speculation", self.speculation, fix)
        if not isinstance(self.batching, bool):
            fix = (
                "True (pack queued tiny calls of one callable into one Ray task) or False "
                "(one task per call)"
            )
            raise invalid("batching", self.batching, fix)
        for name in ("speculation_quantile", "speculation_max_fraction"):
            if getattr(self, name) > 1.0:
                msg = f"{name}={getattr(self, name)!r} is a fraction; pass a value in (0, 1]"
                raise ValueError(msg)
        if self.storage is not None:
            set_(self, "storage", _check_storage(self.storage))
        if self.jitter not in JITTER_MODES:
            raise invalid("jitter", self.jitter, f"one of {', '.join(JITTER_MODES)}")
        set_(self, "retry_on", _parse_retry_on(self.retry_on))
        set_(self, "retry_exceptions", _parse_retry_exceptions(self.retry_exceptions))
        for name in ("cpu_threshold", "memory_threshold", "disk_threshold", "gpu_memory_threshold"):
            if (getattr(self, name) or 0.0) > 100.0:
                msg = f"{name}={getattr(self, name)!r} is a percentage; pass a value in (0, 100]"
                raise ValueError(msg)
        if self.max_retry_delay < self.retry_delay:
            msg = (
                f"max_retry_delay={self.max_retry_delay!r} is below retry_delay="
                f"{self.retry_delay!r}; pass a cap at least as large as the base delay"
            )
            raise ValueError(msg)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FTConfig:
        """Build from a plain dict (the seed's format); unknown keys are refused."""
        if data is None:
            return cls()
        if isinstance(data, FTConfig):
            return data
        if not isinstance(data, Mapping):
            msg = f"config must be a dict or FTConfig, got {type(data).__name__}"
            raise TypeError(msg)
        for key in data:
            if key not in _FIELD_NAMES:
                near = difflib.get_close_matches(str(key), _FIELD_NAMES, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                msg = f"unknown config key {key!r}{hint} Valid keys: {', '.join(_FIELD_NAMES)}"
                raise ValueError(msg)
        return cls(**dict(data))

    @classmethod
    def coerce(cls, config: FTConfig | Mapping[str, Any] | None) -> FTConfig:
        """Accept an FTConfig, a dict of settings, or None for the defaults."""
        return config if isinstance(config, FTConfig) else cls.from_dict(config)

    def replace(self, **changes: Any) -> FTConfig:
        """A copy with some settings changed (validated like the constructor)."""
        return FTConfig.from_dict({**self.to_dict(keep_types=True), **changes})

    def to_dict(self, *, keep_types: bool = False) -> dict[str, Any]:
        """Plain dict; JSON-serializable unless keep_types (exception classes by name)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if keep_types:
            return data
        data["retry_on"] = sorted(t.value for t in self.retry_on)
        data["retry_exceptions"] = [
            f"{t.__module__}.{t.__qualname__}" for t in self.retry_exceptions
        ]
        return data

    def cluster_settings(self) -> dict[str, Any]:
        """The settings that belong to the whole cluster (see :data:`CLUSTER_KEYS`)."""
        return {key: getattr(self, key) for key in CLUSTER_KEYS}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> FTConfig:
        """Inverse of ``to_dict()``; exception classes are re-imported by dotted name."""
        fields = dict(data)
        fields["retry_exceptions"] = tuple(
            _import_exception(path) for path in fields.get("retry_exceptions", ())
        )
        return cls.from_dict(fields)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(FTConfig))

# None turns these off (a utilisation threshold is an opt-in: busy is not broken)
_OPTIONAL = frozenset({"task_timeout", "cpu_threshold", "gpu_memory_threshold", "exit_timeout"})

#: Settings that are the cluster's, not one driver's: they are fixed when the manager actor
#: is created, and a later driver with other values is warned instead of overwriting them.
CLUSTER_KEYS: tuple[str, ...] = (
    "health_check_interval",
    "probe_timeout",
    "probe_failure_threshold",
    "liveness_interval",
    "liveness_phi_threshold",
    "liveness_timeout_floor",
    "probe_start_delay",
    "failure_window",
    "worker_failure_threshold",
    "breaker_timeout",
    "half_open_max_calls",
    "cpu_threshold",
    "memory_threshold",
    "disk_threshold",
    "gpu_temp_threshold",
    "gpu_memory_threshold",
)

# name -> (int or float, lower bound, bound inclusive)
_NUMERIC: dict[str, tuple[type, float, bool]] = {
    "max_retries": (int, 1, True),
    "retry_delay": (float, 0.0, True),
    "backoff_multiplier": (float, 1.0, True),
    "max_retry_delay": (float, 0.0, True),
    "task_timeout": (float, 0.0, False),
    "health_check_interval": (float, 0.0, False),
    "probe_timeout": (float, 0.0, False),
    "probe_failure_threshold": (int, 1, True),
    "checkpoint_interval": (int, 1, True),
    "failure_window": (float, 0.0, False),
    "worker_failure_threshold": (int, 0, True),
    "breaker_timeout": (float, 0.0, True),
    "half_open_max_calls": (int, 1, True),
    "capacity_wait_timeout": (float, 0.0, False),
    "cpu_threshold": (float, 0.0, False),
    "memory_threshold": (float, 0.0, False),
    "disk_threshold": (float, 0.0, False),
    "gpu_temp_threshold": (float, 0.0, False),
    "gpu_memory_threshold": (float, 0.0, False),
    "liveness_interval": (float, 0.0, False),
    "liveness_phi_threshold": (float, 0.0, False),
    "liveness_timeout_floor": (float, 0.0, False),
    "probe_start_delay": (float, 0.0, True),
    "speculation_quantile": (float, 0.0, False),
    "speculation_multiplier": (float, 1.0, True),
    "speculation_min_runtime": (float, 0.0, True),
    "speculation_max_fraction": (float, 0.0, False),
    "oom_memory_multiplier": (float, 1.0, True),
    "exit_timeout": (float, 0.0, True),
}


def _check_number(name: str, value: Any, kind: type, low: float, inclusive: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "an integer" if kind is int else "a number"
        raise invalid(name, value, what)
    if kind is int and not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise invalid(name, value, "a whole number")
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(name, value, "a finite number")
    if value < low or (value == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        msg = f"{name}={value!r} is out of range; pass a value {bound}"
        raise ValueError(msg)
    return kind(value)


def _check_storage(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        fix = "a folder or a URI such as 's3://bucket/ray_ft', or None for $RAY_FT_STORAGE"
        raise invalid("storage", value, f"{fix} (else ~/ray_ft)")
    return value


def _parse_retry_on(value: Any) -> frozenset[FailureType]:
    if isinstance(value, (str, FailureType)) or not isinstance(value, Iterable):
        raise invalid("retry_on", value, "a list of failure types such as ['node_died']")
    try:
        return frozenset(FailureType.parse(item) for item in value)
    except ValueError as exc:
        msg = f"retry_on={value!r} is not valid: {exc}"
        raise ValueError(msg) from None


def _parse_retry_exceptions(value: Any) -> tuple[type[BaseException], ...]:
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise invalid("retry_exceptions", value, "a tuple of exception classes")
    items = tuple(value)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            msg = (
                f"retry_exceptions contains {item!r}, which is not an exception class; "
                "pass classes such as (ValueError,)"
            )
            raise ValueError(msg)
    return items


def _import_exception(path: str) -> type[BaseException]:
    import builtins
    import importlib

    module_name, _, attr = path.rpartition(".")
    module = builtins if module_name == "builtins" else importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]
