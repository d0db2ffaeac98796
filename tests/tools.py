"""What a test does when a tool it needs (a broker, the MicroPython interpreter) is missing:
under CI=true that is a failure, for a developer a skip; one line saying how to install it.
And where a test puts what another user must read."""

import os
import tempfile
from pathlib import Path

import pytest


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def missing(message: str):
    """Fail the calling test under CI, skip it otherwise (never returns)."""
    if ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def shared_temp_dir(prefix: str) -> Path:
    """A new directory (0755) under the system temp dir, for files a test hands to another
    user: mosquitto run as root drops to its own user, a script is run as nobody. Neither can
    enter pytest's tmp_path (0700) nor, often, the checkout (a home is 0750 on recent Ubuntu; a
    clone may sit in a 0700 directory). The caller removes it."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory


def closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users cannot enter, or None."""
    return next((p for p in path.parents if not p.stat().st_mode & 0o001), None)
