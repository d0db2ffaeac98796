"""Making a directory's entries durable: fsync of a file makes its bytes survive a power cut,
not its name; a new file or a rename needs its directory synced too. Used wherever something
is acknowledged or replaced on disk (the spool's salvage, the teach file, the learned
profiles, the file upstream).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def sync_directory(path: Path) -> None:
    """fsync the directory `path` (its new files and renames); OSError when it cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace the file at `path` with `text`, atomically and durably; OSError when it cannot.

    A temporary file in the same directory is written, flushed and fsync'ed, then renamed
    over the file (atomic within one file system) and the directory fsync'ed so the rename
    itself survives a power loss. On any failure the temporary file is removed and the old
    file is untouched.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = None
        sync_directory(directory)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
