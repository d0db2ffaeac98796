"""The file upstream, for sites without a broker: payloads appended back to back to a file
(what `edge-agent decode` and a broker capture read), acknowledged once fsync returns (and,
for a new file, once its directory's fsync made its name durable too).

Same interface as `MqttLink`, so the publisher treats both alike. The file is rotated (renamed
with a UTC stamp, kept) when it passes `rotate_bytes`; what to keep is the site's choice.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ..durable import sync_directory
from . import UpstreamError


class FileLink:
    """Appends, fsyncs, then acknowledges: a payload counts as delivered once on disk."""

    #: The acknowledgement comes after fsync: the payload is stored where it was going.
    acks_stored = True

    def __init__(self, path: str | Path, rotate_bytes: int, wake: asyncio.Event | None = None):
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self._loop = asyncio.get_running_loop()
        self._wake = wake or asyncio.Event()
        self._batch: list[tuple[bytes, asyncio.Future]] = []
        self._writing: asyncio.Task | None = None
        self.closed: asyncio.Future = self._loop.create_future()

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise UpstreamError(f"{self.path}: cannot create its folder: {exc.strerror}") from None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future:
        future = self._loop.create_future()
        if self.closed.done():
            future.set_exception(UpstreamError(f"{self.path}: closed"))
            return future
        self._batch.append((payload, future))
        if self._writing is None or self._writing.done():
            self._writing = self._loop.create_task(self._write())
        return future

    @property
    def where(self) -> str:
        return str(self.path)

    async def close(self) -> None:
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if not self.closed.done():
            self.closed.set_result(None)

    async def _write(self) -> None:
        """Write everything queued so far in one append and one fsync, then settle it."""
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                await asyncio.to_thread(self._append, b"".join(p for p, _ in batch))
            except OSError as exc:
                error = UpstreamError(f"{self.path}: cannot write: {exc.strerror or exc}")
                for _, future in batch + self._batch:
                    future.set_exception(error)
                    future.exception()
                self._batch = []
                if not self.closed.done():
                    self.closed.set_exception(error)
                    self.closed.exception()
                self._wake.set()
                return
            for _, future in batch:
                future.set_result(0)
            self._wake.set()

    def _append(self, data: bytes) -> None:
        """All of `data` or none of it: a write that fails part way (a full disk) is cut back
        to where it started, so the payloads sent again later follow whole ones, never a torn
        one that would make the rest of the file unreadable to `edge-agent decode`."""
        new = not self.path.exists()
        with open(self.path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                _cut_back(f, start)
                raise
            size = f.tell()
        if new:  # fsync made the bytes durable, not the file's name
            sync_directory(self.path.parent)
        if size >= self.rotate_bytes:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            target, n = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"), 0
            while target.exists():  # rotated twice within a second
                n += 1
                target = self.path.with_name(f"{self.path.stem}-{stamp}-{n}{self.path.suffix}")
            self.path.rename(target)
            sync_directory(self.path.parent)  # the rename, before a new file takes the name


def _cut_back(f, size: int) -> None:
    """Truncate a file a failed append left part-written to `size` (freeing what it took),
    as far as the file system lets: the append's own error is the one reported."""
    try:
        f.truncate(size)
        os.fsync(f.fileno())
    except OSError:
        pass
