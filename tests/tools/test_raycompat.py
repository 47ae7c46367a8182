"""The one module that knows which Ray runs: the supported range, the capabilities each
release has, and options Ray itself accepts (pure: no cluster started)."""

from __future__ import annotations

import warnings

import pytest
import ray
import ray.exceptions

from ray_ft import raycompat


@ray.remote
class _Plain:
    pass


def test_the_range_admits_its_ends_and_names_itself_outside():
    (lo, hi) = raycompat.SUPPORTED
    assert raycompat.support_problem((*lo, 1)) is None
    assert raycompat.support_problem((*hi, 0)) is None
    older = raycompat.support_problem((2, 43, 0))
    newer = raycompat.support_problem((2, 61, 0))
    assert older is not None and "older" in older and "2.44 to 2.60" in older
    assert newer is not None and "newer" in newer and "pin the cluster's Ray" in newer
    assert raycompat.support_problem((3, 0, 0)) is not None


def test_the_running_ray_is_inside_the_declared_range():
    """make test and the compat lane both run a release the package declares."""
    assert raycompat.support_problem() is None, ray.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raycompat.warn_if_unsupported.cache_clear()
        assert raycompat.warn_if_unsupported() is None


def test_capabilities_are_named_and_match_the_release():
    has = raycompat.capabilities()
    assert set(has) == set(raycompat.CAPABILITIES)
    assert has["authentication"] == hasattr(ray.exceptions, "AuthenticationError")
    assert has["label_selector"] == (raycompat.RAY_VERSION[:2] >= (2, 50))
    assert has["draining_nodes"]  # every supported release can list draining nodes


def test_avoiding_no_node_changes_nothing():
    options = {"num_cpus": 1}
    assert raycompat.avoid_nodes(options, []) is options


@pytest.mark.parametrize("label_selector", [True, False])
def test_avoiding_nodes_gives_options_this_ray_accepts(monkeypatch, label_selector):
    if label_selector and raycompat.RAY_VERSION[:2] < (2, 50):
        pytest.skip("label_selector arrived in Ray 2.50")
    monkeypatch.setattr(raycompat, "_has_label_selector", lambda: label_selector)
    options = raycompat.avoid_nodes({"num_cpus": 1}, ["b" * 56, "a" * 56])
    if label_selector:
        assert options["label_selector"] == {"ray.io/node-id": f"!in({'a' * 56},{'b' * 56})"}
    else:
        strategy = options["scheduling_strategy"]
        assert type(strategy).__name__ == "NodeLabelSchedulingStrategy"
        named = {(e.key, v) for e in strategy.hard for v in getattr(e.operator, "values", ())}
        assert {("ray.io/node_id", "a" * 56), ("ray.io/node_id", "b" * 56)} <= named
    _Plain.options(**options)  # Ray validates the keys and values here


def test_a_strategy_the_caller_chose_is_left_alone(monkeypatch):
    monkeypatch.setattr(raycompat, "_has_label_selector", lambda: False)
    options = {"scheduling_strategy": "SPREAD"}
    assert raycompat.avoid_nodes(options, ["a" * 56]) == options


def test_authentication_errors_are_recognised_on_every_release():
    assert raycompat.is_authentication_error(RuntimeError("Unauthenticated: bad token"))
    assert raycompat.is_authentication_error(ValueError("missing auth token"))
    assert not raycompat.is_authentication_error(ConnectionError("could not connect"))
    auth = getattr(ray.exceptions, "AuthenticationError", None)
    if auth is not None:
        assert raycompat.is_authentication_error(auth("x"))


def test_version_parsing_tolerates_dev_and_rc_releases():
    assert raycompat._parse("2.44.1") == (2, 44, 1)
    assert raycompat._parse("2.61.0rc1") == (2, 61, 0)
    assert raycompat._parse("3.0.0.dev0") == (3, 0, 0)
    assert raycompat._parse("2.50") == (2, 50, 0)
