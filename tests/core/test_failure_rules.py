"""FailureRules: the verdict on a failed attempt, from the facts alone (no scheduler)."""

from __future__ import annotations

import random

import pytest

from ray_ft.config import FTConfig
from ray_ft.core.failure_rules import FailureRules, Next, Verdict
from ray_ft.core.retry import RetryPolicy
from ray_ft.failures import FailureType


def rules(**cfg) -> FailureRules:
    config = FTConfig(**{"max_retries": 3, "jitter": "none", **cfg})
    return FailureRules(RetryPolicy(config, rng=random.Random(0)))


def judge(r, kind=FailureType.WORKER_CRASH, error=None, **facts):
    args = {"failures": 0, "draining": False, "twin_running": False, "cancelling": False}
    return r.judge(kind, error or RuntimeError("x"), **{**args, **facts})


def test_a_drained_nodes_system_failure_reruns_elsewhere_uncounted():
    verdict = judge(rules(), draining=True, failures=2)  # would be the last retry otherwise
    assert verdict == Verdict(Next.RERUN, elsewhere=True) and not verdict.counted
    # the user's own error on a draining node is still the user's
    user = judge(rules(), FailureType.APPLICATION_ERROR, ValueError("bad"), draining=True)
    assert user.next is Next.FAIL and user.counted


def test_a_copy_failing_while_its_twin_runs_is_only_recorded():
    verdict = judge(rules(), twin_running=True, failures=2)
    assert verdict.next is Next.RECORD and not verdict.counted


@pytest.mark.parametrize(
    ("kind", "elsewhere", "more_memory"),
    [
        (FailureType.WORKER_CRASH, True, False),
        (FailureType.OUT_OF_MEMORY, True, True),
        (FailureType.TASK_TIMEOUT, True, False),
    ],
)
def test_a_retried_failure_waits_its_backoff_and_says_where(kind, elsewhere, more_memory):
    verdict = judge(rules(retry_delay=1.0, backoff_multiplier=2.0), kind, failures=1)
    assert verdict.next is Next.RETRY and verdict.counted
    assert verdict.delay == pytest.approx(2.0)  # the second failure's backoff
    assert (verdict.elsewhere, verdict.more_memory) == (elsewhere, more_memory)
    assert verdict.reason == "retry 3 of 3 after " + kind.value


def test_a_retried_user_error_stays_on_its_warm_node():
    r = rules(retry_exceptions=(ConnectionError,))
    verdict = judge(r, FailureType.APPLICATION_ERROR, ConnectionError("reset"))
    assert verdict.next is Next.RETRY and not verdict.elsewhere


def test_out_of_retries_gives_up_and_the_users_error_fails_as_raised():
    assert judge(rules(), failures=2).next is Next.GIVE_UP
    assert "max_retries=3" in judge(rules(), failures=2).reason
    verdict = judge(rules(), FailureType.APPLICATION_ERROR, ValueError("bad"))
    assert verdict.next is Next.FAIL and "not retried" in verdict.reason


def test_cancelling_ends_what_would_retry_and_only_that():
    assert judge(rules(), cancelling=True).next is Next.CANCEL
    assert judge(rules(), cancelling=True, failures=2).next is Next.GIVE_UP
