"""RetryPolicy: backoff shape, jitter bounds, per-type rules. Nothing sleeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_ft.config import FTConfig
from ray_ft.core.retry import RetryDecision, RetryPolicy, backoff_delay
from ray_ft.failures import FailureType


def policy(**kw):
    return RetryPolicy(FTConfig(**kw), rng=random.Random(0))


def test_delays_grow_geometrically_and_cap():
    p = policy(
        max_retries=10, retry_delay=0.5, backoff_multiplier=3.0, max_retry_delay=20.0, jitter="none"
    )
    delays = [p.decide(n, FailureType.WORKER_CRASH).delay for n in range(1, 10)]
    expected = [min(20.0, 0.5 * 3.0 ** (n - 1)) for n in range(1, 10)]
    assert delays == expected
    assert delays[-1] == 20.0


def test_max_retries_th_failure_is_final():
    p = policy(max_retries=3)
    assert p.decide(1, FailureType.NODE_DIED)
    assert p.decide(2, FailureType.NODE_DIED)
    final = p.decide(3, FailureType.NODE_DIED)
    assert not final and isinstance(final, RetryDecision)
    assert "max_retries=3" in final.reason


def test_application_errors_not_retried_unless_listed():
    p = policy()
    assert not p.decide(1, FailureType.APPLICATION_ERROR, ValueError("x"))
    listed = policy(retry_exceptions=(KeyError,))
    assert listed.decide(1, FailureType.APPLICATION_ERROR, KeyError("k"))
    assert not listed.decide(1, FailureType.APPLICATION_ERROR, ValueError("v"))
    everything = policy(retry_on=list(FailureType))
    assert everything.decide(1, FailureType.APPLICATION_ERROR, ValueError("v"))


def test_retry_on_limits_system_types():
    p = policy(retry_on=["node_died"])
    assert p.decide(1, FailureType.NODE_DIED)
    assert not p.decide(1, FailureType.OUT_OF_MEMORY)


@given(
    attempt=st.integers(1, 200),
    base=st.floats(0, 100),
    mult=st.floats(1, 10),
    jitter=st.sampled_from(["full", "equal", "none"]),
    seed=st.integers(0, 2**32),
)
def test_jitter_stays_in_bounds(attempt, base, mult, jitter, seed):
    cap = base * 4
    cfg = FTConfig(
        max_retries=1000,
        retry_delay=base,
        backoff_multiplier=mult,
        max_retry_delay=cap,
        jitter=jitter,
    )
    d = RetryPolicy(cfg, rng=random.Random(seed)).decide(attempt, FailureType.WORKER_CRASH).delay
    full = backoff_delay(attempt, base, mult, cap)
    assert full <= cap
    if jitter == "full":
        assert 0.0 <= d <= full
    elif jitter == "equal":
        assert full / 2 - 1e-9 <= d <= full + 1e-9
    else:
        assert d == full


def test_backoff_rejects_attempt_zero():
    with pytest.raises(ValueError, match="attempts count from 1"):
        backoff_delay(0, 1, 2, 10)


def test_huge_attempt_does_not_overflow():
    assert backoff_delay(10_000, 1.0, 10.0, 60.0) == 60.0
