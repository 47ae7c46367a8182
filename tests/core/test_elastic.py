"""The elastic cluster's pure parts: node types, the demand book, idleness, drains, and the
scheduler's demand, fail-fast and preemption rules (no Ray, a fake clock)."""

from __future__ import annotations

import math
import pickle

import pytest

from ray_ft.core.autoscaling import DRAIN_GRACE_S, Draining, NodeType, NodeTypes
from ray_ft.core.commands import CapacityError
from ray_ft.core.events import DrainingChanged, NodesChanged, NodeTypesChanged, Submitted, Tick
from ray_ft.core.scheduler import Scheduler
from ray_ft.core.work import CallSpec
from ray_ft.failures import FailureType
from ray_ft.manager.demand import DemandBook, IdleNodes, node_types_from_config
from tests.scheduler_harness import CONFIG, NODES, Harness, work

SIM = NodeTypes((NodeType("sim", (("CPU", 1.0), ("sim", 1.0)), 3),))


# -- node types ---------------------------------------------------------------------------


def test_node_type_fits_listed_resources_and_unlisted_memory():
    sim = SIM.types[0]
    assert sim.fits({"CPU": 1, "sim": 1}) and sim.fits({"CPU": 1, "memory": 1e9})
    assert not sim.fits({"CPU": 2}) and not sim.fits({"GPU": 1})
    assert SIM.launchable({"sim": 1}) and not SIM.launchable({"tpu": 1})
    assert not NodeTypes((NodeType("none", (("GPU", 1.0),), 0),)).launchable({"GPU": 1})


def test_node_types_from_a_cluster_config():
    config = {
        "max_workers": 8,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 4}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4},
            "cpu": {"resources": {"CPU": 2}},
        },
    }
    types = node_types_from_config(config)
    assert types is not None
    assert [(t.name, t.max_workers) for t in types.types] == [("cpu", 8), ("gpu", 4)]
    assert "gpu (CPU=8, GPU=1; max 4)" in types.describe()
    assert NodeTypes.from_json(types.to_json()) == types
    assert pickle.loads(pickle.dumps(types)) == types
    # a type the autoscaler sizes from its instance says nothing: unknown, never fail fast
    del config["available_node_types"]["cpu"]["resources"]
    assert node_types_from_config(config) is None
    assert node_types_from_config({}) is None


# -- demand -------------------------------------------------------------------------------

CPU1 = (("CPU", 1.0),)
SIM1 = (("CPU", 1.0), ("sim", 1.0))


def test_demand_book_sums_drivers_and_forgets_the_silent():
    book = DemandBook(ttl=60)
    book.report("d1", {SIM1: 3}, now=0)
    book.report("d2", {SIM1: 2, CPU1: 1}, now=10)
    assert book.total() == {SIM1: 5, CPU1: 1}
    bundles = book.bundles()
    assert bundles.count({"CPU": 1.0, "sim": 1.0}) == 5 and bundles.count({"CPU": 1.0}) == 1
    version = book.version
    book.report("d1", {SIM1: 3}, now=20)  # the same again: nothing changed
    assert book.version == version
    assert book.expire(now=75) == ["d2"]  # d2 last reported at 10
    assert book.total() == {SIM1: 3}
    book.report("d1", {}, now=80)  # its queue emptied
    assert book.total() == {} and book.bundles() == [] and book.drivers() == 0


def test_demand_book_caps_its_bundles():
    book = DemandBook(max_bundles=100)
    book.report("d", {SIM1: 10_000, CPU1: 10_000}, now=0)
    bundles = book.bundles()
    assert len(bundles) == 100
    assert bundles.count({"CPU": 1.0}) == bundles.count({"CPU": 1.0, "sim": 1.0}) == 50


def test_scheduler_demand_is_queued_plus_running_capped_by_max_in_flight(clock):
    sched = Scheduler(CONFIG, clock=clock, max_in_flight=6)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged({"a": {"CPU": 2.0}})))
    assert sched.demand() == {}
    h.run(sched.handle(Submitted(tuple([work(i) for i in range(10)]))))
    ((_shape, count),) = sched.demand().items()
    assert count == 6  # 2 running + 8 queued, at most max_in_flight
    for attempt_id in list(h.running):
        h.finish(attempt_id, value=1)
    assert sum(sched.demand().values()) == 6
    while h.running:
        h.finish(next(iter(h.running)), value=1)
    assert sched.demand() == {} and sched.idle


def test_no_demand_while_every_queued_call_has_room(clock):
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged(NODES)))
    h.run(sched.handle(Submitted(tuple([work(i) for i in range(2)]))))
    assert sched.demand() == {}  # all placed, nothing waits


# -- capacity with an autoscaler ------------------------------------------------------------


def test_a_request_no_node_type_fits_fails_at_once(clock):
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged({"head": {"CPU": 1.0}})))
    h.run(sched.handle(NodeTypesChanged(SIM)))
    gpu = work(1, gpu=True)
    h.run(sched.handle(Submitted((gpu,))))
    with pytest.raises(CapacityError, match=r"GPU=1.*sim \(CPU=1, sim=1; max 3\)"):
        gpu.future.result(timeout=0)


def test_a_request_a_node_type_fits_waits_for_the_autoscaler(clock):
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged({"head": {"CPU": 1.0}})))
    h.run(sched.handle(NodeTypesChanged(SIM)))
    sim = work(1)
    sim.spec = CallSpec.of({"resources": {"sim": 1}}, None)
    h.run(sched.handle(Submitted((sim,))))
    clock.advance(CONFIG.capacity_wait_timeout - 1)
    h.run(sched.handle(Tick()))
    assert not sim.future.done()
    h.run(sched.handle(NodesChanged({"head": {"CPU": 1.0}, "w1": {"CPU": 1.0, "sim": 1.0}})))
    assert [a.node_id for a in h.running.values()] == ["w1"]


def test_a_node_held_back_fails_fast_only_if_it_could_run_the_request(clock):
    """A draining (or excluded) node may come back, so a request only it could run waits;
    one it could not run either still fails at once (an autoscaler scaling down drains
    nodes: the infeasible request waited 300 s)."""
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    nodes = {"head": {"CPU": 1.0}, "w1": {"CPU": 1.0, "sim": 1.0}, "g": {"CPU": 1.0, "GPU": 1.0}}
    h.run(sched.handle(NodesChanged(nodes)))
    h.run(sched.handle(NodeTypesChanged(SIM)))
    h.run(sched.handle(DrainingChanged({"w1": clock() + 60, "g": clock() + 60})))
    tpu = work(1)
    tpu.spec = CallSpec.of({"resources": {"tpu": 1}}, None)
    gpu = work(2, gpu=True)
    h.run(sched.handle(Submitted((tpu, gpu))))
    with pytest.raises(CapacityError, match="tpu=1"):
        tpu.future.result(timeout=0)
    assert not gpu.future.done()  # the draining GPU node may come back


def test_without_node_types_the_wait_is_as_before(clock):
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged({"head": {"CPU": 1.0}})))
    gpu = work(1, gpu=True)
    h.run(sched.handle(Submitted((gpu,))))
    assert not gpu.future.done()
    clock.advance(CONFIG.capacity_wait_timeout + 1)
    h.run(sched.handle(Tick()))
    with pytest.raises(CapacityError, match="capacity_wait_timeout"):
        gpu.future.result(timeout=0)


# -- drains (preemption notices) ------------------------------------------------------------


def _busy(clock, nodes=None):
    sched = Scheduler(CONFIG, clock=clock)
    h = Harness(sched, clock)
    h.run(sched.handle(NodesChanged(nodes or {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}})))
    return sched, h


def test_a_drained_nodes_attempt_gets_a_copy_and_costs_no_retry(clock):
    sched, h = _busy(clock)
    call = work(1)
    h.run(sched.handle(Submitted((call,))))
    (first,) = h.running.values()
    victim = first.node_id
    h.run(sched.handle(DrainingChanged({victim: clock() + 3})))
    copies = [a for a in h.running.values() if a.node_id != victim]
    assert len(copies) == 1 and copies[0].backup
    assert sched.summary()["preemption_copies"] == 1
    # the node dies at its deadline: the attempt there fails as Ray reports a node death
    clock.advance(3)
    h.finish(first.attempt_id, error=RuntimeError("node died"), failure_type=FailureType.NODE_DIED)
    assert not call.future.done()
    h.finish(copies[0].attempt_id, value="ok")
    assert call.future.result(timeout=0) == "ok"
    stats = sched.summary()
    assert stats["retries"] == 0 and stats["preempted"] == 1
    assert stats["failures_by_type"] == {"preempted": 1}
    assert all(e.blame == "none" for e in h.reports)


def test_a_draining_node_takes_no_new_work_and_leaving_charges_nothing(clock):
    sched, h = _busy(clock)
    h.run(sched.handle(DrainingChanged({"a": 0.0})))  # no deadline: a scale-down
    h.run(sched.handle(Submitted(tuple([work(i) for i in range(2)]))))
    assert {a.node_id for a in h.running.values()} == {"b"}
    h.run(sched.handle(NodesChanged({"b": {"CPU": 1.0}})))  # it left
    stats = sched.summary()
    assert stats["draining_nodes"] == [] and stats["excluded_nodes"] == []
    assert stats["retries"] == 0 and stats["failures_by_type"] == {}


def test_a_call_that_ends_before_the_deadline_gets_no_copy(clock):
    sched, h = _busy(clock)
    for i in range(3):  # learn the pace: 1 s on either node
        h.run(sched.handle(Submitted((work(i),))))
        clock.advance(1)
        h.finish(next(iter(h.running)), value=i)
    h.run(sched.handle(Submitted((work(9),))))
    (attempt,) = h.running.values()
    h.run(sched.handle(DrainingChanged({attempt.node_id: clock() + 30})))
    assert len(h.running) == 1 and sched.summary()["preemption_copies"] == 0


def test_a_node_killed_without_notice_still_charges(clock):
    sched, h = _busy(clock)
    call = work(1)
    h.run(sched.handle(Submitted((call,))))
    (attempt,) = h.running.values()
    h.finish(attempt.attempt_id, error=RuntimeError("died"), failure_type=FailureType.NODE_DIED)
    stats = sched.summary()
    assert stats["retries"] == 1 and stats["failures_by_type"] == {"node_died": 1}


def test_draining_forgets_an_undone_drain_after_a_grace():
    draining = Draining()
    assert draining.update({"a": 100.0, "b": 0.0}, now=0) == ["a", "b"]
    assert draining.deadlines["b"] == math.inf
    assert draining.outlives("a", launched_at=95, pace=None, now=96)
    assert not draining.outlives("a", launched_at=95, pace=2, now=96)
    assert draining.outlives("a", launched_at=95, pace=2, now=97.5)  # it outran its pace
    assert draining.outlives("a", launched_at=95, pace=10, now=96)
    assert not draining.outlives("b", launched_at=0, pace=None, now=1)
    draining.update({}, now=1)
    assert "a" in draining  # a node that died may leave the list first
    draining.update({}, now=1 + DRAIN_GRACE_S)
    assert "a" not in draining and not draining


# -- idleness ------------------------------------------------------------------------------


def test_idle_nodes_need_every_resource_free_for_the_linger():
    idle = IdleNodes(linger=3)
    total = {"w": {"CPU": 1.0, "sim": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0}}
    busy = {"w": {"sim": 1.0, "memory": 1e9}}  # a used resource is absent (Ray's way)
    free = {"w": {"CPU": 1.0, "sim": 1.0, "memory": 5e8}}
    idle.observe(total, busy, now=0)
    assert not idle.idle("w", now=10)
    idle.observe(total, free, now=10)
    assert not idle.idle("w", now=12) and idle.idle("w", now=13)
    idle.observe(total, busy, now=14)
    assert not idle.idle("w", now=20)
    idle.observe({}, {}, now=21)  # it left: forgotten
    assert not idle.idle("w", now=100)


# -- the manager's watch: one request for the cluster, cleared after the work ---------------


def _watch(clock, restarted=False):
    from ray_ft.actors._cluster_watch import ElasticWatch

    asked: list[list[dict]] = []
    watch = ElasticWatch(
        clock=clock, request=asked.append, discover=lambda: (True, SIM), restarted=restarted
    )
    return watch, asked


def test_the_watch_asks_once_per_change_and_clears_after_the_work(clock):
    watch, asked = _watch(clock)
    watch.step()
    assert asked == []  # no demand ever: a user's own request stands
    view = watch.report("d1", {SIM1: 2}, None)
    assert view is not None and view["autoscaled"] and view["node_types"] == SIM.to_json()
    assert watch.report("d1", {SIM1: 2}, view["token"]) is None  # current: nothing sent
    watch.step()
    watch.step()
    assert asked == [[{"CPU": 1.0, "sim": 1.0}] * 2]
    watch.report("d1", {}, view["token"])
    watch.step()
    assert asked[-1] == [] and len(asked) == 2
    watch.step()
    assert len(asked) == 2


def test_a_silent_driver_stops_counting_and_a_restarted_manager_clears_what_stood(clock):
    watch, asked = _watch(clock)
    watch.report("dead", {SIM1: 3}, None)
    watch.step()
    clock.advance(61)
    watch.step()
    assert asked == [[{"CPU": 1.0, "sim": 1.0}] * 3, []]
    restarted, asked_again = _watch(clock, restarted=True)
    restarted.step()
    assert asked_again == [[]]  # the request made before the restart is not left standing


def test_a_demand_seen_is_cleared_even_when_it_ended_before_the_manager_asked(clock):
    # a cold executor asked the autoscaler itself; its demand came and went before the new
    # manager's first round: the manager still clears the request that stands
    watch, asked = _watch(clock)
    watch.report("cold", {SIM1: 2}, None)
    watch.report("cold", {}, None)
    watch.step()
    assert asked == [[]]


def test_the_first_view_after_the_drain_list_is_read_says_so(clock):
    from ray_ft.actors._cluster_watch import ElasticWatch

    watch = ElasticWatch(
        clock=clock, request=lambda b: None, discover=lambda: (False, None), read_draining=dict
    )
    first = watch.report("d", {}, None)
    assert first is not None and first["drains_read"] is False
    watch.step()  # reads the (empty) drain list of this Ray: a new view, even though empty
    second = watch.report("d", {}, first["token"])
    assert second is not None and second["drains_read"] is True


def test_a_round_that_cannot_read_the_node_types_keeps_the_last_ones(clock):
    """The monitor restarting or its config unreadable is no news: infeasible work must
    still fail fast (one CI run waited 120 s on a request no type fits)."""
    from ray_ft.actors._cluster_watch import ElasticWatch

    found = [(True, SIM), (True, None), (False, None)]
    watch = ElasticWatch(
        clock=clock, request=lambda b: None, discover=lambda: found.pop(0), read_draining=dict
    )
    watch.step()
    view = watch.report("d", {}, None)
    assert view is not None and view["node_types"] == SIM.to_json()
    for _ in range(2):
        clock.advance(31)  # the next discovery round
        watch.step()
        assert watch.report("d", {}, view["token"]) is None  # nothing changed
    assert found == [] and watch.autoscaled and watch.node_types == SIM


def test_the_monitor_read_is_the_one_of_this_cluster():
    """A machine holding two clusters (or the monitor of one that is ending): the config
    named by the monitor of this GCS's port, not the first monitor listed."""
    from ray_ft.actors._cluster_watch import _monitor_config_path

    def monitor(port: int, config: str) -> list[str]:
        return [
            "/usr/bin/python3", "-u", "/ray/autoscaler/_private/monitor.py",
            f"--gcs-address=127.0.0.1:{port}", "--autoscaling-config", config,
        ]  # fmt: skip

    lines = [["/bin/raylet", "--gcs-address=127.0.0.1:6391"], monitor(6380, "/old.yaml")]
    lines.append(monitor(6391, "/this.yaml"))
    assert _monitor_config_path("6391", lines) == "/this.yaml"
    assert _monitor_config_path(None, lines) == "/old.yaml"  # the port unknown: any
    assert _monitor_config_path("7000", lines) is None
    one_string = [" ".join(monitor(6391, "/quoted.yaml"))]
    assert _monitor_config_path("6391", [one_string]) == "/quoted.yaml"


# -- the executor's cold watch: the manager's duties until a new manager answers ------------


class _Cold:
    def __init__(self, clock):
        from ray_ft.runtime.cluster_link import ColdWatch

        self.asked: list[list[dict]] = []
        self.draining: dict[str, float] | None = {}
        self.gcs_away = False
        self.watch = ColdWatch(read_draining=self._read, request=self._ask, clock=clock)

    def _read(self):
        if self.gcs_away:
            raise ConnectionError("GCS unavailable")
        return self.draining

    def _ask(self, bundles):
        if self.gcs_away:
            raise ConnectionError("GCS unavailable")
        self.asked.append(bundles)


def test_a_cold_watch_asks_for_its_own_demand_once_per_change_and_clears_it(clock):
    cold = _Cold(clock)
    cold.watch.step()
    assert cold.asked == []  # nothing wanted, nothing ever asked: a user's request stands
    cold.watch._demand = {SIM1: 2}
    cold.gcs_away = True
    cold.watch.step()  # the GCS is away: asked again next round, nothing raised
    cold.gcs_away = False
    cold.watch.step()
    cold.watch.step()
    assert cold.asked == [[{"CPU": 1.0, "sim": 1.0}] * 2]
    cold.watch._demand = {}
    cold.watch.step()
    assert cold.asked[-1] == [] and len(cold.asked) == 2


def test_a_cold_watch_passes_on_each_new_drain_list_once(clock):
    cold = _Cold(clock)
    cold.watch.step()
    assert cold.watch.take() is None  # nothing drains: nothing to say
    cold.draining = {"n1": 1000.0}
    cold.watch.step()
    assert cold.watch.take() == {"n1": 1000.0}
    cold.watch.step()
    assert cold.watch.take() is None  # unchanged: nothing new
    cold.draining = {}
    cold.watch.step()
    assert cold.watch.take() == {}  # the drain was undone (or the node left)
    cold.draining = None  # this Ray cannot say: nothing passed on
    cold.watch.step()
    assert cold.watch.take() is None


def test_the_link_keeps_the_cold_watch_until_the_manager_has_read_the_drain_list(clock):
    from ray_ft.runtime.cluster_link import ElasticLink

    cold = _Cold(clock)
    link = ElasticLink(None, clock=clock, wall_clock=lambda: 1000.0, cold=cold.watch)
    early = {"token": 0, "node_types": None, "draining": {}, "drains_read": False}
    assert link._events(early) == []  # types unchanged; the cold watch's drains hold
    assert link.cold is cold.watch
    later = {"token": 1, "node_types": None, "draining": {"n1": 1003.0}, "drains_read": True}
    assert link._events(later) == [DrainingChanged({"n1": clock() + 3.0})]
    assert link.cold is None and cold.watch._stopped.is_set()


class _Link:
    """An ElasticLink's face to the loop: each step hands over the next scripted events."""

    def __init__(self, *answers: list) -> None:
        self.answers = list(answers)
        self.demands: list[dict] = []

    def step(self, demand):
        self.demands.append(dict(demand))
        return self.answers.pop(0) if self.answers else []

    def close(self) -> None:
        pass


class _NoWorkers:
    """Workers with nothing to say: an idle loop's round touches no Ray."""

    demands = True
    refresh_s = 1.0

    def poll(self, due, current):
        return []

    def translate(self, polled):
        return polled

    def close(self) -> None:
        pass


class _NoManager:
    def poll(self):
        return None

    def trial_answers(self):
        return []


def test_a_view_that_comes_as_the_loop_goes_idle_reaches_the_scheduler(clock):
    """The link takes a view's token when it reads the view: the loop's last step before
    it sleeps must feed that view in, or the scheduler never gets the node types (an
    infeasible call then waited out capacity_wait_timeout; the flake of CI's autoscaler
    test)."""
    from ray_ft.runtime.loop import Loop, Round

    sched = Scheduler(CONFIG, clock=clock)
    link = _Link([], [NodeTypesChanged(SIM)])  # the answer arrives at the idle step
    loop = Loop(
        CONFIG,
        sched,
        _NoWorkers(),
        _NoManager(),
        link,
        clock=clock,
        thread_name="t",
        ray_up=lambda: True,
    )
    assert loop.step() is Round.IDLE
    assert link.demands == [{}, {}] and not link.answers
    assert sched.summary()["node_types"] == SIM.describe()
