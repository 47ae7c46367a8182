"""Liveness judged per arrival: a LivenessBook over 10,000 simulated nodes (fake clock)."""

from __future__ import annotations

from ray_ft.manager.liveness import LivenessBook, PhiAccrualDetector


def book() -> LivenessBook:
    return LivenessBook(lambda: PhiAccrualDetector(threshold=8.0, timeout_floor=2.0))


def test_a_frozen_node_is_found_within_3_s_among_10000_and_no_other():
    b = book()
    nodes = [f"n{i}" for i in range(10_000)]
    now = 0.0
    verdicts: list[tuple[float, str]] = []
    for second in range(1, 12):
        now = float(second)
        for i, node in enumerate(nodes):
            if node == "n42" and second > 5:
                continue  # frozen after its heartbeat at t=5
            b.heartbeat(node, now + (i % 100) / 1000)  # answers spread over 0.1 s
        for tick in range(5):
            verdicts += [(now + tick * 0.2, n) for n in b.judge(now + tick * 0.2)]
    assert [n for _, n in verdicts] == ["n42"]
    found_at = verdicts[0][0]
    assert found_at - 5.042 <= 3.0
    assert b.heartbeat("n42", 20.0) is True and "n42" not in b.down  # back


def test_judging_costs_arrivals_not_nodes(monkeypatch):
    b = book()
    for i in range(10_000):
        b.heartbeat(f"n{i}", 1.0)
    looked_at = []
    real = PhiAccrualDetector.is_alive
    monkeypatch.setattr(
        PhiAccrualDetector, "is_alive", lambda d, now=None: looked_at.append(d) or real(d, now)
    )
    for k in range(1000):
        assert b.judge(1.0 + k * 0.001) == []  # no deadline due yet
    assert looked_at == []  # 1,000 wake-ups looked at none of the 10,000 nodes
    b.forget([f"n{i}" for i in range(5000)])
    assert len(b.detectors) == 5000


def test_a_held_back_verdict_is_judged_again():
    b = book()
    b.heartbeat("a", 0.0)
    b.heartbeat("a", 1.0)
    (down,) = b.judge(10.0)
    b.recheck(down, 10.2)
    assert b.judge(10.1) == [] and b.judge(10.3) == ["a"]
