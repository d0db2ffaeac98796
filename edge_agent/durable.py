"""Making a directory's entries durable: fsync of a file makes its bytes survive a power cut,
not its name; a new file or a rename needs its directory synced too. Used wherever something
is acknowledged or replaced on disk (the spool's salvage, the teach file, the file upstream).
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(path: Path) -> None:
    """fsync the directory `path` (its new files and renames); OSError when it cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
