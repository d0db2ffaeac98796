"""A pair of connected pseudo-terminals, like `socat pty,raw,echo=0 pty,raw,echo=0`, in pure
Python: a null-modem cable between two serial device paths, for Modbus RTU and the bridge.

Never touches a real serial port. Bytes nobody reads pile up to a bound, then the oldest go,
as on a real line with nobody listening; the relay thread never blocks on a write.
"""

from __future__ import annotations

import os
import select
import threading
import tty

#: Bytes held for a side that does not read; a real UART FIFO holds far less.
MAX_PENDING = 64 * 1024
_READ_SIZE = 4096


class PtyPair:
    """Two pseudo-terminals in raw mode; what is written to `a` is read from `b` and back.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self) -> None:
        self.a = ""
        self.b = ""
        self._fds: list[int] = []
        self._masters: tuple[int, int] = (-1, -1)
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PtyPair:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("PtyPair already started")
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._wake_r, self._wake_w = os.pipe()
        # We keep the slave ends open too, so a master never reads EIO between two openers.
        self._fds = [master_a, slave_a, master_b, slave_b, self._wake_r, self._wake_w]
        for slave in (slave_a, slave_b):
            tty.setraw(slave)
        for master in (master_a, master_b):
            os.set_blocking(master, False)
        self.a, self.b = os.ttyname(slave_a), os.ttyname(slave_b)
        self._masters = (master_a, master_b)
        self._thread = threading.Thread(target=self._relay, name="ptypair-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the relay and close every descriptor; idempotent."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _relay(self) -> None:
        master_a, master_b = self._masters
        other = {master_a: master_b, master_b: master_a}
        pending = {master_a: bytearray(), master_b: bytearray()}  # bytes waiting to go *to* it
        while True:
            writers = [fd for fd, data in pending.items() if data]
            readable, writable, _ = select.select([master_a, master_b, self._wake_r], writers, [])
            if self._wake_r in readable:
                return
            for fd in readable:
                try:
                    data = os.read(fd, _READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # EIO: cannot happen while we hold the slave, but be safe
                    continue
                queue = pending[other[fd]]
                queue += data
                del queue[: max(0, len(queue) - MAX_PENDING)]
            for fd in writable:
                try:
                    sent = os.write(fd, pending[fd])
                except (BlockingIOError, InterruptedError):
                    continue
                del pending[fd][:sent]
