"""``ray-ft why``: a node's story from the manager's status (pure: a status dict in)."""

from __future__ import annotations

import pytest

from ray_ft.tools.explain import explain, find_node

NOW = 10_000.0
FAILED = {
    "status": "failed",
    "severity": "fatal",
    "breaker": "OPEN",
    "reasons": ["stopped answering heartbeats (3.1s silent, phi 9.2 > 8)"],
    "health_reasons": [],
    "heartbeat_silence_s": 3.1,
    "phi": 9.2,
    "latency_ms": 1.2,
    "has_probe": True,
    "probe_misses": 0,
    "drain": None,
    "transitions": [{"worker_id": "abc", "from": "CLOSED", "to": "OPEN", "at": NOW - 5}],
    "recent_failures": [
        {
            "timestamp": NOW - 6,
            "failure_type": "node_died",
            "blame": "node",
            "task_id": "t7",
            "details": "the node died\nmore",
        }
    ],
}


def test_why_tells_the_verdict_the_breaker_moves_and_the_failures_behind_them():
    text = explain("abc", FAILED, now=NOW)
    assert text.splitlines()[0] == "node abc: failed, breaker OPEN"
    assert "why: stopped answering heartbeats" in text
    assert "5 s ago: CLOSED -> OPEN" in text
    assert "6 s ago: node_died (charged to: node; task t7) the node died" in text
    assert "more" not in text  # a failure's first line only


def test_a_node_that_left_on_notice_is_nobodys_fault():
    text = explain("abc", {**FAILED, "drain": "drained", "reasons": []}, now=NOW)
    assert "drained" in text.splitlines()[0] and "nobody's fault" in text


def test_a_node_without_a_probe_yet_is_not_suspected():
    node = {"status": "alive", "breaker": "CLOSED", "has_probe": False}
    text = explain("n", node, now=NOW)
    assert "nothing stands against it" in text and "never evidence against it" in text


def test_a_prefix_names_one_node_or_the_error_names_the_candidates():
    nodes = {"abc123": {}, "abd456": {}, "ff0000": {}}
    assert find_node(nodes, "abc") == "abc123"
    with pytest.raises(ValueError, match="names 2 nodes; pass more of the id"):
        find_node(nodes, "ab")
    with pytest.raises(ValueError, match=r"no node id starts with 'zz'.*ff0000"):
        find_node(nodes, "zz")
