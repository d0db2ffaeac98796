"""What a test does when a tool it needs (a broker, the MicroPython interpreter) is missing:
under CI=true that is a failure, for a developer a skip; one line saying how to install it."""

import os

import pytest


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing(message: str):
    """Fail the calling test under CI, skip it otherwise (never returns)."""
    if ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
