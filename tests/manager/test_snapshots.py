"""Exclusion snapshots as deltas: pure SnapshotLog, the manager's answers, many executors."""

from __future__ import annotations

import itertools
import pickle
import random

import pytest

from ray_ft.manager.snapshots import SET_KEYS, SnapshotLog, apply_delta
from ray_ft.manager.state import FaultToleranceManager


def snap(token, **lists):
    return {"token": token, "half_open": {}, **{k: sorted(lists.get(k, ())) for k in SET_KEYS}}


def test_unchanged_sends_nothing_and_unknown_sends_whole():
    log = SnapshotLog()
    current = snap("e:1", excluded=["a"])
    assert log.since("e:1", current) is None
    assert log.since(None, current) is current
    assert log.since("other:7", current) is current  # a restarted manager's old token


def test_delta_carries_only_what_changed_across_several_versions():
    log = SnapshotLog()
    s1 = snap("e:1", excluded=["a", "b"], failed=["a"])
    s2 = snap("e:2", excluded=["a", "b", "c"], failed=["a"])
    s3 = snap("e:3", excluded=["b", "c"], failed=[], dead=["a"])
    s4 = snap("e:4", excluded=["a", "b", "c"], failed=[], dead=["a"])  # a: out, then back
    for old, new in ((s1, s2), (s2, s3), (s3, s4)):
        log.record(old, new)
    answer = log.since("e:1", s4)
    assert answer["delta"] == {"excluded": (["c"], []), "failed": ([], ["a"]), "dead": (["a"], [])}
    assert apply_delta(s1, answer) == s4
    assert apply_delta(s3, log.since("e:3", s4)) == s4
    assert pickle.loads(pickle.dumps(answer)) == answer  # it travels through Ray


def test_a_delta_never_applies_to_another_base():
    log = SnapshotLog()
    s1, s2 = snap("e:1"), snap("e:2", excluded=["x"])
    log.record(s1, s2)
    with pytest.raises(ValueError, match="cannot apply"):
        apply_delta(snap("e:0"), log.since("e:1", s2))


def test_an_executor_too_far_behind_gets_the_whole_snapshot():
    log = SnapshotLog(keep=4)
    snaps = [snap(f"e:{i}", excluded=[f"n{i}"]) for i in range(10)]
    for old, new in itertools.pairwise(snaps):
        log.record(old, new)
    assert log.since("e:2", snaps[-1]) is snaps[-1]  # forgotten: whole
    assert apply_delta(snaps[6], log.since("e:6", snaps[-1])) == snaps[-1]


def test_random_histories_rebuild_exactly():
    rng = random.Random(5)
    log = SnapshotLog(keep=16)
    nodes = [f"n{i}" for i in range(30)]
    history = [snap("e:0")]
    for version in range(1, 60):
        lists = {k: rng.sample(nodes, rng.randint(0, 8)) for k in SET_KEYS}
        history.append(snap(f"e:{version}", **lists))
        log.record(history[-2], history[-1])
        for held in rng.sample(history, min(5, len(history))):
            answer = log.since(held["token"], history[-1])
            if answer is None:
                assert held is history[-1]
            else:
                assert apply_delta(held, answer) == history[-1]


def test_manager_answers_fifty_pollers_with_what_changed(clock):
    m = FaultToleranceManager({"breaker_timeout": 60.0}, clock=clock)
    nodes = [f"node-{i:04d}" for i in range(1000)]
    for node in nodes:
        m.register_worker(node)
    first = m.exclusions_since(None)
    held = [first] * 50
    m.breaker("node-0007").open()
    m.mark_worker_dead("node-0010")
    for i, base in enumerate(held):
        answer = m.exclusions_since(base["token"])
        assert "delta" in answer
        sent = sum(len(a) + len(r) for a, r in answer["delta"].values())
        assert sent == 3  # excluded +2, dead +1: not the 1,000 nodes
        held[i] = apply_delta(base, answer)
    assert held[0]["excluded"] == ["node-0007", "node-0010"]
    assert all(m.exclusions_since(h["token"]) is None for h in held)
