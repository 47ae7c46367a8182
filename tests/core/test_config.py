"""FTConfig: defaults, validation messages, fuzzed input, round trips."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_ft.config import FTConfig
from ray_ft.failures import FailureType


def test_defaults_match_design():
    c = FTConfig()
    assert (c.max_retries, c.retry_delay, c.backoff_multiplier, c.max_retry_delay) == (
        3,
        5.0,
        2.0,
        60.0,
    )
    assert c.jitter == "full" and c.task_timeout is None
    assert FailureType.APPLICATION_ERROR not in c.retry_on
    assert c.retry_on == {t for t in FailureType if t is not FailureType.APPLICATION_ERROR}
    assert (c.health_check_interval, c.probe_timeout, c.probe_failure_threshold) == (30.0, 10.0, 3)
    assert (c.checkpoint_interval, c.failure_window, c.worker_failure_threshold) == (10, 3600.0, 3)
    assert (c.breaker_timeout, c.half_open_max_calls, c.capacity_wait_timeout) == (300.0, 1, 600.0)
    # utilisation thresholds are opt-in (busy is not broken)
    assert (c.cpu_threshold, c.memory_threshold, c.disk_threshold) == (None, 95.0, 95.0)
    assert (c.gpu_temp_threshold, c.gpu_memory_threshold) == (85.0, None)
    assert (c.liveness_interval, c.liveness_phi_threshold, c.liveness_timeout_floor) == (
        1.0,
        8.0,
        2.0,
    )


def test_seed_dict_accepted():
    c = FTConfig.from_dict({"max_retries": 3, "retry_delay": 1, "health_check_interval": 5})
    assert c.max_retries == 3 and c.retry_delay == 1.0 and isinstance(c.retry_delay, float)


def test_unknown_key_names_nearest():
    with pytest.raises(ValueError, match=r"'max_retrys'.*did you mean 'max_retries'"):
        FTConfig.from_dict({"max_retrys": 3})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_retries", 0),
        ("max_retries", "3"),
        ("max_retries", True),
        ("max_retries", 2.5),
        ("retry_delay", -1),
        ("retry_delay", float("nan")),
        ("backoff_multiplier", 0.5),
        ("jitter", "sometimes"),
        ("retry_on", "node_died"),
        ("retry_on", ["node_dead"]),
        ("retry_exceptions", ["ValueError"]),
        ("task_timeout", 0),
        ("cpu_threshold", 150),
        ("probe_timeout", float("inf")),
    ],
)
def test_bad_values_name_key_and_value(key, value):
    with pytest.raises(ValueError) as info:
        FTConfig.from_dict({key: value})
    assert key in str(info.value)


def test_cap_below_base_refused():
    with pytest.raises(ValueError, match="max_retry_delay"):
        FTConfig(retry_delay=10, max_retry_delay=1)


def test_non_mapping_refused():
    with pytest.raises(TypeError, match="dict or FTConfig"):
        FTConfig.from_dict([("max_retries", 3)])  # type: ignore[arg-type]


def test_json_and_pickle_round_trip():
    c = FTConfig(
        retry_exceptions=(KeyError, json.JSONDecodeError), retry_on=["node_died"], task_timeout=2.5
    )
    again = FTConfig.from_json_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    assert pickle.loads(pickle.dumps(c)) == c


def test_replace_validates():
    c = FTConfig().replace(max_retries=5)
    assert c.max_retries == 5
    with pytest.raises(ValueError, match="max_retries"):
        FTConfig().replace(max_retries=-1)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.text(max_size=8), max_size=3),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_keys = st.one_of(st.sampled_from(sorted(FTConfig.__dataclass_fields__)), st.text(max_size=12))


@given(st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_only_value_or_type_errors(data):
    try:
        c = FTConfig.from_dict(data)
    except (ValueError, TypeError):
        return
    assert FTConfig.from_json_dict(json.loads(json.dumps(c.to_dict()))) == c
