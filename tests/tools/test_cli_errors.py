"""The ``ray-ft`` command's messages for a cluster it cannot use (pure: no Ray started)."""

from __future__ import annotations

import ray.exceptions

from ray_ft.tools.cli import connect_error


class _StandIn(Exception):
    """Ray releases before 2.60 have no AuthenticationError; the message still names it."""


AuthenticationError = getattr(ray.exceptions, "AuthenticationError", _StandIn)


def test_a_refused_client_is_told_about_authentication_not_a_missing_cluster():
    refused = connect_error("127.0.0.1:6390", AuthenticationError("Unauthenticated: bad token"))
    assert "refused this client: authentication" in refused
    assert "RAY_AUTH_MODE=token" in refused and "no Ray cluster" not in refused
    missing = connect_error("127.0.0.1:6390", ConnectionError("could not connect"))
    assert missing.startswith("no Ray cluster at 127.0.0.1:6390")
