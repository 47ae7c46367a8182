"""The scheduler's test harness: carries out its commands as the Ray loop would (no Ray),
checking each one; shared by the pure scheduler, batching, speculation and attribution tests."""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter

from ray_ft.config import FTConfig
from ray_ft.core.commands import (
    AcquireTrial,
    Cancel,
    Launch,
    LaunchBatch,
    ReleaseTrial,
    Report,
    Resolve,
)
from ray_ft.core.events import AttemptDone, LaunchFailed, TrialGranted
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec, Work
from tests.conftest import FakeClock

__all__ = ["CONFIG", "NODES", "Harness", "work"]

NODES = {
    "a": {"CPU": 2.0, "memory": 8e9},
    "b": {"CPU": 1.0, "memory": 4e9},
    "c": {"CPU": 1.0, "GPU": 1.0, "memory": 4e9},
}
CONFIG = FTConfig(
    max_retries=3, retry_delay=0.5, max_retry_delay=2.0, capacity_wait_timeout=30, jitter="none"
)


def work(i: int, *, gpu: bool = False, timeout: float | None = None, name: str = "f") -> Work:
    options = {"num_gpus": 1} if gpu else {}
    spec = CallSpec.of({**options, **({"timeout": timeout} if timeout else {})}, None)
    return Work(f"{name}-{i}", name, None, b"", (i,), {}, spec, cf.Future())


class Harness:
    """Carries out commands as the Ray loop would, and checks each one."""

    def __init__(self, sched: Scheduler, clock: FakeClock) -> None:
        self.sched, self.clock = sched, clock
        self.running: dict[int, object] = {}
        self.resolved: Counter[cf.Future] = Counter()
        self.reports: list = []
        self.trial_requests: list[str] = []
        self.fail_launches = 0  # the next launches fail to execute (Ray refuses them)
        self.fail_acquires = 0  # the next trial requests cannot be sent
        self.batches: list[tuple] = []  # every LaunchBatch's attempts

    def run(self, commands) -> None:
        self.sched.state.validate()  # after every event the test fed in
        for command in commands:
            if isinstance(command, LaunchBatch):
                self.batches.append(command.attempts)
                assert len({a.node_id for a in command.attempts}) == 1
                self.run([Launch(a) for a in command.attempts])
            elif isinstance(command, Launch):
                attempt = command.attempt
                excluded = self.sched.state.exclusions.excluded | {
                    n for n, _ in self.sched.state.exclusions.half_open
                }
                assert attempt.node_id in self.sched.nodes
                assert attempt.trial or attempt.node_id not in excluded
                assert attempt.node_id not in self.sched.state.draining  # no new work goes there
                if self.fail_launches:
                    self.fail_launches -= 1
                    self.run(self.sched.handle(LaunchFailed(attempt.attempt_id, ValueError("no"))))
                    continue
                self.running[attempt.attempt_id] = attempt
            elif isinstance(command, Cancel):
                self.running.pop(command.attempt.attempt_id, None)
            elif isinstance(command, Resolve):
                self.resolved[command.future] += 1
                assert self.resolved[command.future] == 1, "resolved twice"
                assert not command.future.done(), "resolving an ended future"
                if command.error is not None:
                    command.future.set_exception(command.error)
                else:
                    command.future.set_result(command.value)
            elif isinstance(command, Report):
                self.reports.extend(command.events)
            elif isinstance(command, AcquireTrial):
                if self.fail_acquires:  # the executor answers a request it cannot send
                    self.fail_acquires -= 1
                    self.run(self.sched.handle(TrialGranted(command.node_id, False)))
                    continue
                self.trial_requests.append(command.node_id)
            else:
                assert isinstance(command, ReleaseTrial)

    def finish(self, attempt_id: int, **outcome) -> None:
        self.running.pop(attempt_id, None)
        self.run(self.sched.handle(AttemptDone(attempt_id, **outcome)))
