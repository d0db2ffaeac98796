"""What went wrong with the spool's file, in one line: SQLite's and the OS's errors sorted into
damage (the only reason to move a file aside) and operational errors (wait, retry or refuse to
start; never touch the file).

SQLite reports a lock past the busy timeout as SQLITE_BUSY (or LOCKED, PROTOCOL), a file it
opened read-only because this user may not write it as SQLITE_READONLY (READONLY_DIRECTORY
when the folder forbids the -wal and -shm files), a folder it cannot create a file in as
SQLITE_CANTOPEN, ENOSPC on a write as SQLITE_FULL, and everything else the OS refuses as
SQLITE_IOERR_*: on a full disk that includes growing the `-shm` index (IOERR_SHMSIZE) and
fsync, so an I/O error counts as a full disk when the file system has next to no room left.
Other I/O errors (EIO from a failing SD card, a file system needing fsck) are operational too:
the file may read again after a remount or fsck, and moving it aside on a dying card saves
nothing. Damage is SQLITE_CORRUPT and SQLITE_NOTADB (and a failed `PRAGMA quick_check`, which
the spool raises itself). Never touches a file.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import sqlite3
import stat
from pathlib import Path


class SpoolError(Exception):
    """The spool's file cannot be used: one line naming the path and why. `reason` names the
    kind (the agent counts and reports by it)."""

    reason = "error"


class SpoolUnavailable(SpoolError):
    """An operational error: the file is sound (as far as anyone knows) but cannot be used
    now. Retry later, or refuse to start; never a reason to move the file aside."""

    reason = "unavailable"


class SpoolLocked(SpoolUnavailable):
    """Another process holds the write lock past the busy timeout."""

    reason = "locked"


class SpoolReadOnly(SpoolUnavailable):
    """This user may not write the file, its -wal/-shm, or its folder (or the file system is
    mounted read-only)."""

    reason = "read_only"


class SpoolFull(SpoolUnavailable):
    """The spool's file system is full."""

    reason = "disk_full"


class SpoolIOError(SpoolUnavailable):
    """The OS refused a read or write for another reason (EIO from a failing card, ...)."""

    reason = "io_error"


class SpoolCorrupt(SpoolError):
    """The file is damaged: not a database, or its pages do not hold together."""

    reason = "corrupt"


#: Below this much room on the spool's file system an I/O error counts as a full disk: a few
#: commits' worth of pages (a commit of one interval's frames and its b-tree pages).
FULL_BELOW_BYTES = 1 << 20

#: SQLite's primary result codes by what they say of a file (the collector's store reports
#: the first two alike).
LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL}
NOT_WRITABLE = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_OS_FAILED = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def classify(path: Path, exc: BaseException, busy_timeout_s: float) -> SpoolError:
    """The one-line `SpoolError` for an error of SQLite or the OS on the spool at `path`."""
    if isinstance(exc, sqlite3.Error):
        code = primary_code(exc)
        what = f"{exc} ({getattr(exc, 'sqlite_errorname', None) or type(exc).__name__})"
        if code in _DAMAGED:
            return SpoolCorrupt(f"{path}: damaged: {what}")
        if code in LOCKED:
            return SpoolLocked(
                f"{path}: locked by another process for more than {busy_timeout_s:g} s "
                f"({what}): a second agent, or an open sqlite3 session, on this spool?"
            )
        if code in NOT_WRITABLE or (code == sqlite3.SQLITE_CANTOPEN and _not_writable(path)):
            return SpoolReadOnly(_not_writable(path) or f"{path}: not writable: {what}")
        if code == sqlite3.SQLITE_FULL or (code in _OS_FAILED and _nearly_full(path)):
            return SpoolFull(_full(path, what))
        if code in _OS_FAILED:
            return SpoolIOError(f"{path}: {what}")
        return SpoolError(f"{path}: {what}")
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno in _FULL_ERRNOS:
            return SpoolFull(_full(path, what))
        if exc.errno in _DENIED_ERRNOS:
            return SpoolReadOnly(_not_writable(path) or f"{path}: not writable: {what}")
        return SpoolIOError(f"{path}: {what}")
    return SpoolError(f"{path}: {exc}")


def primary_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (the extended code's low byte; 0: none)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _full(path: Path, what: str) -> str:
    free = free_bytes(path)
    room = "" if free is None else f", {free / 2**20:.1f} MiB free on its file system"
    return f"{path}: disk full ({what}{room})"


def free_bytes(path: Path) -> int | None:
    """Room left for this user on the file system of `path` (root may use the reserve)."""
    try:
        fs = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return None
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


def _nearly_full(path: Path) -> bool:
    free = free_bytes(path)
    return free is not None and free < FULL_BELOW_BYTES


def _not_writable(path: Path) -> str | None:
    """Which of the spool's files, or its folder, this user may not write, with owner and mode;
    None when all of them are writable."""
    me = _user_name(os.geteuid())
    read_only_fs = _on_read_only_fs(path)
    if read_only_fs:
        return f"{path}: on a read-only file system (mounted ro); the spool needs to write"
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists() and not _may_write(candidate):
            return f"{path}: not writable by {me}: {candidate.name} is {_owner_and_mode(candidate)}"
    folder = path.parent
    if folder.exists() and not _may_write(folder, os.W_OK | os.X_OK):
        return (
            f"{path}: not writable by {me}: its folder {folder} is {_owner_and_mode(folder)} "
            "(the spool creates its -wal and -shm files there)"
        )
    return None


def _may_write(path: Path, mode: int = os.W_OK) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _on_read_only_fs(path: Path) -> bool:
    try:
        fs = os.statvfs(path if path.exists() else path.parent)
    except OSError:
        return False
    return bool(fs.f_flag & os.ST_RDONLY)


def _owner_and_mode(path: Path) -> str:
    st = path.stat()
    return (
        f"owned by {_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)} "
        f"(uid {st.st_uid}, gid {st.st_gid}), mode {stat.S_IMODE(st.st_mode):04o}"
    )


def _user_name(uid: int) -> str:
    return f"{_name(pwd.getpwuid, uid)} (uid {uid})"


def _name(lookup, number: int) -> str:
    """A user's or group's name; its number where it has none (a container, a deleted user)."""
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)
