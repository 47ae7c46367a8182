"""The one spelling of a refused value: what was passed, and what to pass instead."""

from __future__ import annotations

__all__ = ["invalid"]


def invalid(name: str, value: object, fix: str) -> ValueError:
    """``name=value is not valid; pass fix``, to raise (``raise invalid(...)``)."""
    return ValueError(f"{name}={value!r} is not valid; pass {fix}")
