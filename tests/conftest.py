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
# test session, never the home folder of whoever runs the tests; removed after a green run
import tempfile  # noqa: E402

_OWN_STORAGE = "RAY_FT_STORAGE" not in os.environ
if _OWN_STORAGE:
    os.environ["RAY_FT_STORAGE"] = tempfile.mkdtemp(prefix="ray_ft_storage_")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402 - after the environment is set


def pytest_sessionfinish(session, exitstatus):
    """The session's storage folder goes when every test passed (kept to look into else)."""
    if _OWN_STORAGE and exitstatus == 0:
        shutil.rmtree(os.environ["RAY_FT_STORAGE"], ignore_errors=True)


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


class SharedCluster:
    """One real Ray cluster kept across consecutive test modules that ask for the same
    number of nodes, made whole again between them.

    A module that removed or killed nodes leaves a cluster the next module still gets: its
    dead nodes are dropped and 1-CPU nodes added back (~2 s each), once Ray lists them dead
    (~3 s under QUICK_DEATH). Where Ray still lists one alive after 8 s, as for another size
    or a head that is down, the cluster is shut down and a fresh one started. A module that
    starts Ray its own way gets it shut down first.
    """

    def __init__(self) -> None:
        self.cluster = None
        self._session = None
        self._size = 0

    def get(self, size: int):
        if self.cluster is not None and not self._made_whole(size):
            self.release()
        if self.cluster is None:
            from tests.raytools import cluster_session

            self._session = cluster_session(size)
            self.cluster = self._session.__enter__()
            self._size = size
        return self.cluster

    def release(self) -> None:
        session, self._session, self.cluster = self._session, None, None
        if session is not None:
            session.__exit__(None, None, None)

    def _made_whole(self, size: int) -> bool:
        """Drop the dead nodes and add nodes up to ``size``; False where it cannot be."""
        import ray

        cluster = self.cluster
        if self._size != size or not ray.is_initialized():
            return False
        if not cluster.head_node.remaining_processes_alive():
            return False
        for node in list(cluster.worker_nodes):
            if not node.remaining_processes_alive():
                cluster.remove_node(node, allow_graceful=False)  # dead already: forget it
        running = {n.node_id for n in cluster.list_all_nodes()}
        deadline = time.monotonic() + 8.0  # QUICK_DEATH: a killed node leaves in ~3 s
        while {n["NodeID"] for n in ray.nodes() if n["Alive"]} - running:
            if time.monotonic() > deadline:
                return False  # Ray still lists a dead node: a driver could be handed it
            time.sleep(0.2)
        while len(cluster.list_all_nodes()) < size:
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        return True


_SHARED = SharedCluster()
_USES_SHARED: dict[str, bool] = {}  # module -> some test of it uses the shared cluster


def _uses_shared(item: pytest.Item) -> bool:
    defs = item._fixtureinfo.name2fixturedefs.get("cluster")  # the fixture closure
    return bool(defs) and not defs[-1].baseid.endswith(".py")  # not a module's own


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules on a shared cluster run next to those of the same size (after the pure
    tests, before modules that start Ray their own way); within a module, in order."""
    for item in items:
        key = item.module.__name__
        _USES_SHARED[key] = _USES_SHARED.get(key, False) or _uses_shared(item)

    def group(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("cluster") is None:
            return (0, 0)
        if _USES_SHARED[item.module.__name__]:
            return (1, getattr(item.module, "CLUSTER_NODES", 3))
        return (2, 0)

    items.sort(key=group)  # stable: files and tests keep their order within a group


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cluster") and not _USES_SHARED.get(item.module.__name__):
        _SHARED.release()  # this module starts Ray its own way


@pytest.fixture(scope="session", autouse=True)
def _shared_cluster_released():
    yield
    _SHARED.release()


@pytest.fixture(scope="module")
def cluster(request):
    """A real cluster of ``CLUSTER_NODES`` (a module's constant; 3 unless set) 1-CPU
    nodes for one module's tests, made whole again for the next module of that size; no
    manager is left behind."""
    from tests.raytools import kill_manager

    c = _SHARED.get(getattr(request.module, "CLUSTER_NODES", 3))
    yield c
    with contextlib.suppress(Exception):
        kill_manager()


@pytest.fixture
def nodes(cluster, request):
    """The module's nodes again before each test (tests remove some), a fresh manager
    after."""
    from tests.raytools import kill_manager, restore_nodes

    restore_nodes(cluster, getattr(request.module, "CLUSTER_NODES", 3))
    yield cluster
    kill_manager()
