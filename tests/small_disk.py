"""A real file system that fills up, for tests: a small tmpfs mounted in a private mount
namespace that only the child process sees (`unshare --mount` as root, as in CI;
`unshare --user --map-root-user --mount` otherwise), so nothing outside the test is touched
and the mount goes with the process.

The child runs Python with `SMALL_DISK` (the mount point) and `fill()` / `free()` (a filler
file taking every free byte, then removed) defined before its script, and prints what the
test checks."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.tools import missing

PRELUDE = textwrap.dedent("""
    import os, subprocess, sys
    SMALL_DISK = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + sys.argv[2], "tmpfs", SMALL_DISK],
                   check=True)
    FILLER = os.path.join(SMALL_DISK, "filler")

    def fill():
        fd = os.open(FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, bytes(4096))
        except OSError:
            pass
        try:
            while True:
                os.write(fd, b"x")
        except OSError:
            pass
        os.close(fd)

    def free():
        os.remove(FILLER)
""")


@functools.cache
def _unshare() -> list[str] | None:
    """The unshare command that gives this user a private mount namespace here, or None."""
    if shutil.which("unshare") is None:
        return None
    base = (
        ["unshare", "--mount"]
        if os.geteuid() == 0
        else ["unshare", "--user", "--map-root-user", "--mount"]
    )
    probe = subprocess.run([*base, "true"], capture_output=True, timeout=10)
    return base if probe.returncode == 0 else None


def run_on_small_disk(
    tmp_path: Path, script: str, size: str = "2m", timeout_s: float = 60
) -> subprocess.CompletedProcess:
    """Run `script` (Python) as a child with a fresh tmpfs of `size` at a folder under
    `tmp_path`; skips (fails under CI=true) where no private mount namespace can be had (a
    container without CAP_SYS_ADMIN, unprivileged user namespaces off)."""
    command = _unshare()
    if command is None:
        missing("no private mount namespace here (unshare --mount) for a small tmpfs")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    return subprocess.run(
        [*command, sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(mount_point), size],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
