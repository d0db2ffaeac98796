"""The control loop: its own thread on an absolute-deadline schedule from the monotonic clock,
woken between deadlines when samples arrive so that it answers them at once.

asyncio's timers are too coarse for 100 Hz (docs/architecture.md), so the loop runs beside
the event loop. Samples reach it through a queue the poller fills without waiting; its
writes leave through the actuator's writer without waiting; its events go back to the event
loop through a callback that must not block. So it never waits on disk, network or upstream.
It measures its lateness (tick time minus scheduled time), its period and its latency (the
newest control sample's arrival to the write that answered it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from ..samples import Arrival, Quality
from ..stats import LatencyWindow
from .actuator import Actuator
from .adaptive import AdaptiveController, State

log = logging.getLogger(__name__)

#: States whose override is a safety action: min(current, safe), or the feed hold.
_URGENT = frozenset((State.FAULT, State.HOLD))


class ControlLoop:
    def __init__(
        self,
        controller: AdaptiveController,
        actuator: Actuator,
        inbox: queue.SimpleQueue[list[Arrival]],
        *,
        link_up: Callable[[], bool],
        on_events: Callable[[list[tuple[str, dict]]], None],
        clock_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], bool | None] | None = None,
    ):
        self.controller = controller
        self.actuator = actuator
        self.inbox = inbox
        self.link_up = link_up
        self.on_events = on_events
        self.clock_ns = clock_ns
        self._wake = threading.Event()
        # Waits until the next deadline; True when `notify` woke it early (a sample came).
        self.sleep = sleep or self._wake.wait
        self.period_ns = round(controller.cfg.period_s * 1e9)
        self.lateness = LatencyWindow()
        self.latency = LatencyWindow()
        self.ticks = 0
        self.overruns = 0
        self.early_ticks = 0  # ticks a sample's arrival triggered between deadlines
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Samples are in the inbox: answer them now rather than at the next deadline."""
        self._wake.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def tick(self, now_ns: int) -> None:
        """One control period: take what arrived, decide, write, report."""
        cfg = self.controller.cfg
        arrivals: list[Arrival] = []
        while True:
            try:
                arrivals.extend(self.inbox.get_nowait())
            except queue.Empty:
                break
        fresh_ns = None  # the newest load sample this tick answers, if any
        for arrived_ns, sample in arrivals:
            if sample.channel == cfg.signal:
                fresh_ns = arrived_ns
            elif sample.channel == cfg.override_tag and sample.quality is Quality.GOOD:
                self.actuator.read_back(cfg.override_tag, sample.value)
        self.controller.link_up = self.link_up()
        command = self.controller.update(now_ns, arrivals)
        if command.override is None:
            written = self.actuator.tick(now_ns)
        else:
            # A fault's safe override and a feed hold go to the controller before anything
            # else the link has waiting (docs/safety.md).
            urgent = self.controller.state in _URGENT
            written = self.actuator.set(cfg.override_tag, command.override, now_ns, urgent)
        if written is not None:
            self.controller.commanded(written)
            if fresh_ns is not None:  # a write answering a new sample
                self.latency.add((self.clock_ns() - fresh_ns) / 1e9)
        if command.events:
            self.on_events(command.events)
        self.ticks += 1

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    def _run(self) -> None:
        _realtime(self.controller.cfg.realtime_priority)
        deadline = self.clock_ns()
        while not self._stop.is_set():
            now = self.clock_ns()
            self.lateness.add(max(0, now - deadline) / 1e9)
            self._guarded_tick(now)
            deadline += self.period_ns
            now = self.clock_ns()
            if now > deadline:
                missed = (now - deadline) // self.period_ns + 1
                self.overruns += missed
                deadline += missed * self.period_ns
            self._wait_for(deadline)

    def _wait_for(self, deadline: int) -> None:
        """Sleep until the deadline; a sample that arrives meanwhile is answered at once, in
        an extra tick off the schedule (the law runs per sample, its timers on the clock)."""
        while not self._stop.is_set():
            remaining = (deadline - self.clock_ns()) / 1e9
            if remaining <= 0 or not self.sleep(remaining):
                return
            self._wake.clear()
            self.early_ticks += 1
            self._guarded_tick(self.clock_ns())

    def _guarded_tick(self, now_ns: int) -> None:
        """The thread's only way to tick, on schedule or early: a bug in a tick must not
        leave the machine at a boosted feed nor end the thread (docs/safety.md)."""
        try:
            self.tick(now_ns)
        except Exception:
            log.exception("control loop: tick failed; holding the safe override")
            self._fail_safe(now_ns)

    def _fail_safe(self, now_ns: int) -> None:
        cfg = self.controller.cfg
        current = self.actuator.value.get(cfg.override_tag)
        if current is not None:
            safe = min(current, cfg.safe_override_pct)
            self.actuator.set(cfg.override_tag, safe, now_ns, urgent=True)


def _realtime(priority: int) -> None:
    """SCHED_FIFO for this thread (pid 0 is the calling thread), when configured. Refused
    (no RLIMIT_RTPRIO, RestrictRealtime=yes): logged, and the loop runs normally scheduled."""
    if priority <= 0:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        log.info("control loop: real-time scheduling, SCHED_FIFO priority %d", priority)
    except OSError as exc:
        log.warning(
            "control loop: SCHED_FIFO priority %d refused (%s); running normally scheduled "
            "(docs/service.md, real-time scheduling)",
            priority,
            exc.strerror,
        )
