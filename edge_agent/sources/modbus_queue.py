"""The order of one controller's requests: sans-IO, no clock, no sockets.

A Modbus connection carries one request at a time (RTU is half duplex; a TCP controller
answers in turn), so the order of the requests waiting is a safety decision: a safe override
that waits behind reads to a silent controller waits a reply timeout per read. The rules:

- an urgent write (the safe override, a feed hold, the write on the way out) goes next, before
  anything else that waits;
- another write goes before the reads that wait, but never twice in a row while a read waits:
  a control loop that writes every tick cannot starve the poll that feeds it;
- a newer write to a register replaces the one waiting for it (it is `superseded`, never sent),
  so there are never two waiting writes to one register, however long the controller is silent;
- where the link can abandon the request in flight (`can_abandon`: Modbus TCP, whose replies
  carry a transaction id, so a late reply to an abandoned request is told apart and dropped),
  an urgent write does not wait for it either: `preempts()` says when to abandon it. On RTU
  the bus is half duplex and replies carry no id: the urgent write goes right after the
  request in flight ends (its reply or its timeout).

The shell (`modbus_link.py`) puts jobs in, takes the next one, says when it is done, and
abandons the one in flight when `preempts()` turns true.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Job:
    """One request to make: a read (`register` None) or a write to `register`."""

    register: int | None = None
    urgent: bool = False
    payload: Any = field(default=None, repr=False)

    @property
    def is_write(self) -> bool:
        return self.register is not None


class RequestQueue:
    def __init__(self, can_abandon: bool):
        self.can_abandon = can_abandon
        self.in_flight: Job | None = None
        self._reads: deque[Job] = deque()
        self._writes: dict[int, Job] = {}  # register -> the one write waiting for it
        self._write_last = False  # the last job taken was a write that is not urgent

    def __len__(self) -> int:
        return len(self._reads) + len(self._writes)

    def put(self, job: Job) -> Job | None:
        """Queue `job`; for a write, return the waiting write to its register that it
        supersedes (the caller answers that one: it will never be sent)."""
        if not job.is_write:
            self._reads.append(job)
            return None
        superseded = self._writes.pop(job.register, None)
        self._writes[job.register] = job
        return superseded

    def take(self) -> Job | None:
        """The next job to send (now in flight), or None when nothing waits."""
        if self.in_flight is not None:
            raise RuntimeError(f"{self.in_flight} is still in flight")
        job = self._next()
        if job is not None:
            if job.is_write:
                del self._writes[job.register]
            else:
                self._reads.popleft()
            self._write_last = job.is_write and not job.urgent
        self.in_flight = job
        return job

    def _next(self) -> Job | None:
        for job in self._writes.values():
            if job.urgent:
                return job
        if self._writes and not (self._write_last and self._reads):
            return next(iter(self._writes.values()))
        if self._reads:
            return self._reads[0]
        return next(iter(self._writes.values()), None)

    def done(self, job: Job) -> None:
        """The job in flight ended: answered, timed out, failed or abandoned."""
        if job is not self.in_flight:
            raise RuntimeError(f"{job} is not in flight")
        self.in_flight = None

    def preempts(self) -> bool:
        """Whether the job in flight should be abandoned now: an urgent write waits and the
        link can abandon a request without mistaking its late reply for the next one's."""
        return (
            self.can_abandon
            and self.in_flight is not None
            and any(job.urgent for job in self._writes.values())
        )

    def drain(self) -> list[Job]:
        """Take every waiting job out (the link stops), writes first; not the one in flight."""
        jobs = [*self._writes.values(), *self._reads]
        self._writes.clear()
        self._reads.clear()
        return jobs

    def discard(self, job: Job) -> bool:
        """Take a waiting job out (its caller gave up); False if it is not waiting."""
        if job.is_write:
            if self._writes.get(job.register) is job:
                del self._writes[job.register]
                return True
            return False
        try:
            self._reads.remove(job)
        except ValueError:
            return False
        return True
