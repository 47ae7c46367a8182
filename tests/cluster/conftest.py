"""Fixtures of the cluster tests (the cluster itself: tests/conftest.py)."""

from __future__ import annotations

import pytest

from ray_ft import FaultTolerantExecutor
from tests.raytools import QUICK_RETRIES


@pytest.fixture
def ex(cluster):
    """An executor with quick retries and no manager, on the module's cluster; shut down
    (its leftover calls cancelled) after the test."""
    executor = FaultTolerantExecutor(QUICK_RETRIES, manager=False)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)
