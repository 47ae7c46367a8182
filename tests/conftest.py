"""Shared fixtures: loopback-only Ray, a fake clock for the pure core."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray workers must import test modules to unpickle functions defined in them: pytest
# imports each test file by its own name from its folder (tests/core, tests/cluster, ...).
_here = os.path.dirname(os.path.abspath(__file__))
_folders = sorted(
    os.path.join(_here, d)
    for d in os.listdir(_here)
    if os.path.isdir(os.path.join(_here, d)) and not d.startswith((".", "_"))
)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_here, *_folders, os.path.dirname(_here), *filter(None, [os.environ.get("PYTHONPATH")])]
)

# ray_ft's storage (relative checkpoint folders, the manager's state): one temp folder per
# test session, never the home folder of whoever runs the tests
import tempfile  # noqa: E402

os.environ.setdefault("RAY_FT_STORAGE", tempfile.mkdtemp(prefix="ray_ft_storage_"))

import sys  # noqa: E402

import pytest  # noqa: E402 - after the environment is set


@pytest.fixture(autouse=True)
def _ray_only_where_marked(request):
    """A test that starts Ray must say so (``@pytest.mark.cluster``), so that
    ``make test-fast`` (``-m "not cluster"``) runs only the pure tests."""
    yield
    if request.node.get_closest_marker("cluster") is None and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            pytest.fail(
                f"{request.node.nodeid} started Ray without @pytest.mark.cluster: mark it "
                "(or its module: pytestmark = pytest.mark.cluster)"
            )


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def cluster():
    """A real 3-node cluster (1 CPU each) shared by the tests of one module."""
    from tests.raytools import cluster_session

    with cluster_session(3) as c:
        yield c


@pytest.fixture
def nodes(cluster):
    """Three nodes again before each test (tests remove some), a fresh manager after."""
    from tests.raytools import kill_manager, restore_nodes

    restore_nodes(cluster)
    yield cluster
    kill_manager()
