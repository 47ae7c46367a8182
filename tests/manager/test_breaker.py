"""CircuitBreaker transitions, trial cap and the seed API, on a fake clock."""

from __future__ import annotations

import pytest

from ray_ft.manager.breaker import BreakerState, CircuitBreaker


def make(clock, timeout=10.0, calls=1):
    return CircuitBreaker(timeout, half_open_max_calls=calls, clock=clock)


def in_trial(clock) -> CircuitBreaker:
    """A breaker opened, its 10 s timeout passed, its one trial call admitted."""
    b = make(clock)
    b.open()
    clock.advance(10)
    assert b.allow_request()
    return b


def test_starts_closed_and_admits(clock):
    b = make(clock)
    assert b.state == "CLOSED" and b.state is BreakerState.CLOSED
    assert not b.is_open()
    assert all(b.allow_request() for _ in range(100))


def test_open_refuses_until_timeout_then_half_open(clock):
    b = make(clock)
    b.open()
    assert b.is_open() and b.state == "OPEN"
    assert not b.allow_request()
    clock.advance(9.99)
    assert b.state is BreakerState.OPEN
    clock.advance(0.01)
    assert b.state is BreakerState.HALF_OPEN
    assert not b.is_open()


def test_half_open_trial_cap(clock):
    b = make(clock, calls=2)
    b.open()
    clock.advance(10)
    assert b.trials_available() == 2
    assert b.allow_request()
    assert b.allow_request()
    assert not b.allow_request()
    assert b.trials_available() == 0
    b.release_trial()
    assert b.allow_request()


def test_trial_success_closes(clock):
    b = in_trial(clock)
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow_request() and b.allow_request()


def test_trial_failure_reopens_for_a_full_timeout(clock):
    b = in_trial(clock)
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.advance(9)
    assert b.state is BreakerState.OPEN
    clock.advance(1)
    assert b.state is BreakerState.HALF_OPEN


def test_closed_ignores_single_outcomes(clock):
    b = make(clock)
    b.record_failure()
    b.record_success()
    assert b.state is BreakerState.CLOSED


def test_close_from_any_state(clock):
    b = make(clock)
    b.open()
    b.close()
    assert b.state is BreakerState.CLOSED
    b.open()
    clock.advance(10)
    b.close()
    assert b.state is BreakerState.CLOSED


def test_listeners_see_every_transition(clock):
    b = make(clock)
    seen = []
    b.add_listener(lambda br, old, new: seen.append((old.value, new.value)))
    b.open()
    clock.advance(10)
    b.allow_request()
    b.record_failure()
    clock.advance(10)
    b.allow_request()
    b.record_success()
    assert seen == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]


def test_state_round_trip_keeps_remaining_open_time(clock):
    b = make(clock)
    b.open()
    clock.advance(4)
    state = b.get_state()
    assert state["state"] == "OPEN" and state["open_remaining"] == pytest.approx(6)
    other_clock = type(clock)(start=50.0)
    restored = CircuitBreaker(1.0, clock=other_clock)
    restored.load_state(state)
    assert restored.timeout == 10.0 and restored.is_open()
    other_clock.advance(5.9)
    assert restored.is_open()
    other_clock.advance(0.1)
    assert restored.state is BreakerState.HALF_OPEN


@pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"half_open_max_calls": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="pass"):
        CircuitBreaker(**kwargs)
