"""Paces, straggler batches and memory are learned per callable, not per name: every
lambda is "<lambda>", and two unrelated ones must never share what was learned."""

from __future__ import annotations

import concurrent.futures as cf
import functools

from ray_ft.core.events import NodesChanged, Submitted
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec, Work
from ray_ft.runtime.remote import callable_identity
from tests.scheduler_harness import CONFIG, Harness


def objective(x, scale=1.0):
    return x * scale


def test_identity_tells_callables_apart_not_their_arguments():
    fast, slow = (lambda x: x), (lambda x: x)  # one line, one name, two callables
    assert callable_identity(fast) != callable_identity(slow)
    assert callable_identity(functools.partial(objective, scale=2)) == callable_identity(
        functools.partial(objective, scale=3)
    )
    closures = [(lambda i=i: i) for i in range(3)]  # one definition: one callable
    assert len({callable_identity(c) for c in closures}) == 1
    assert callable_identity(pow) == "builtins.pow"


def lambda_work(i: int, kind: str) -> Work:
    spec = CallSpec.of({}, None)
    return Work(f"l-{i}", "<lambda>", None, b"", (i,), {}, spec, cf.Future(), kind=kind)


def test_two_lambdas_never_share_a_pace(clock):
    h = Harness(Scheduler(CONFIG, clock=clock), clock)
    h.run(h.sched.handle(NodesChanged({"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})))
    slow = lambda_work(0, "<lambda>#slow")
    fast = lambda_work(1, "<lambda>#fast")
    h.run(h.sched.handle(Submitted((slow,))))
    h.run(h.sched.handle(Submitted((fast,))))
    by_work = {a.work.kind: i for i, a in h.running.items()}
    clock.advance(0.01)
    h.finish(by_work["<lambda>#fast"], value=1)
    clock.advance(5.0)
    h.finish(by_work["<lambda>#slow"], value=0)
    paces = {kind: runtime for (_, kind), runtime in h.sched.state.table.paces.runtime.items()}
    assert paces["<lambda>#fast"] < 0.1 and paces["<lambda>#slow"] > 4.0
    assert Work("t", "f", None, b"", (), {}, CallSpec.of({}, None), cf.Future()).kind == "f"
