"""The control host: the adaptive control loop's life on the agent's side.

It makes the controller, the actuator (holding the controller source's one writer) and the
loop that ticks them in its own thread; feeds the loop the control inputs without waiting;
brings the loop's events back onto the event loop to be stored as telemetry; keeps teach-in
records in their file (reloaded when edited); learns each finished part's profile for the
preview ([control] preview) and keeps the part beside it for `teach show`; and stops the loop
leaving the feed at min(current, safe) (docs/safety.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import queue
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping

from ..config import ControlConfig
from ..routing import SampleRouter
from ..sources.base import Source, WriteTarget
from ..tasks import cancel_and_wait
from .actuator import Actuator
from .adaptive import AdaptiveController, control_inputs
from .learning import LearningFailed, learn_in_child
from .loop import ControlLoop
from .part import PartRecord
from .preview import ProfileBook
from .profile_store import ProfileStore, profile_dir
from .teach import TeachError, TeachStore

log = logging.getLogger(__name__)

#: How often the teach file is checked for edits: a stat every few seconds costs nothing.
TEACH_FILE_CHECK_S = 2.0


class ControlHost:
    """One agent's control: made with the agent (what it may write is checked then), started
    once the sources and the spool are up."""

    def __init__(
        self,
        cfg: ControlConfig,
        clock,
        source: Source,
        router: SampleRouter,
        store_event: Callable[[str, dict], Coroutine],
    ):
        self.cfg, self.clock, self.source = cfg, clock, source
        self._store_event = store_event
        # A target the actuator cannot write whole: refused now, not once the machine runs.
        self._targets: Mapping[str, WriteTarget] = source.write_targets(cfg) if cfg.enabled else {}
        if cfg.enabled:  # inputs that arrive before the loop starts wait in its inbox
            router.control_tags = frozenset(control_inputs(cfg))
        self.loop: ControlLoop | None = None
        self.events: Counter[str] = Counter()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.teach = TeachStore(cfg.teach_file)
        # The learned preview's profiles: learned in a child process, one part at a time
        # (learning.py), and kept beside the teach file.
        self.book = ProfileBook()
        self.profiles = ProfileStore(profile_dir(cfg.teach_file))
        self._learning = asyncio.Lock()
        self._teach_watch: asyncio.Task | None = None
        self._tasks_in_flight: set[asyncio.Task] = set()

    def deliver(self, arrivals: list) -> None:
        """Control inputs from the router, without waiting; the loop answers at once."""
        self.inbox.put(arrivals)
        if self.loop is not None:
            self.loop.notify()

    def start(self) -> None:
        """The control loop's thread, its controller and the one actuator (which takes the
        link's only writer). Teach-in records are read here, once, before the loop starts."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        controller = self.make(loop)
        self.loop.start()
        if cfg.target_mode == "teach_in":
            self._teach_watch = loop.create_task(self._watch_teach_file(controller))
        log.info(
            "adaptive control on %s at %g Hz, target %s",
            cfg.signal,
            1 / cfg.period_s,
            "taught per tool" if cfg.target_mode == "teach_in" else f"{cfg.target_load_pct:g} %",
        )

    def make(self, loop: asyncio.AbstractEventLoop) -> AdaptiveController:
        """`self.loop`, not started: the controller, the actuator holding the link's one
        writer, and the loop that ticks them (tests tick it on simulated time)."""
        cfg = self.cfg
        taught = {}
        if cfg.target_mode == "teach_in":
            try:
                taught = self.teach.load()
            except TeachError as exc:
                log.error("%s; teach-in starts afresh for every tool", exc)
        controller = AdaptiveController(cfg, taught)
        if cfg.preview:
            self._restore_profiles(controller)
        writer = self.source.take_writer(loop)
        actuator = Actuator(cfg, self._targets, writer)
        source = self.source
        self.loop = ControlLoop(
            controller,
            actuator,
            self.inbox,
            link_up=lambda: source.connected,
            on_events=lambda events: loop.call_soon_threadsafe(self._on_events, events),
            clock_ns=self.clock.monotonic_ns,
        )
        return controller

    async def _watch_teach_file(self, controller: AdaptiveController) -> None:
        """Reload the teach file when it changes (`edge-agent teach reset`, another agent's
        export copied in); the controller uses it from the next program start."""
        changed, stamp = self.teach.changed_since(None)
        while True:
            await asyncio.sleep(TEACH_FILE_CHECK_S)
            changed, stamp = self.teach.changed_since(stamp)
            if not changed:
                continue
            try:
                controller.set_taught(await asyncio.to_thread(self.teach.load))
                log.info("teach file %s reloaded", self.teach.path)
            except TeachError as exc:
                log.error("%s; keeping the records already loaded", exc)

    def _save_taught(self, record) -> None:
        """In a worker thread (the teach file is fsynced). A save that fails (a full disk, a
        folder the agent may not write) is one line and counted, never a task's traceback:
        the controller keeps using the record until the agent stops, and the record is in
        the telemetry's `teach_in_learned` event."""
        try:
            self.teach.put(record)
        except TeachError as exc:
            self.events["teach_save_failed"] += 1
            log.error("%s; tool %d's record is used until the agent stops", exc, record.tool)

    def _on_events(self, events: list[tuple[str, dict]]) -> None:
        """Events from the control thread, on the event loop: stored as telemetry; a teach-in
        record also goes to the teach file (in a worker thread: it fsyncs)."""
        for kind, detail in events:
            self.events[kind] += 1
            if kind == "teach_in_learned":
                record = detail["record"]
                detail = dataclasses.asdict(record)
                self._background(asyncio.to_thread(self._save_taught, record))
            elif kind == "part" and self.cfg.preview and self.loop is not None:
                controller = self.loop.controller
                part, idle = controller.last_part, controller.idle_pct
                self._background(self._learn(controller, part, idle))
            log.log(
                logging.WARNING if kind in ("overload", "breakage", "undercut") else logging.INFO,
                "control: %s %s",
                kind,
                detail,
            )
            self._background(self._store_event(kind, detail))

    async def _learn(self, controller, part: PartRecord, idle: float | None) -> None:
        """A finished part learned in a child process (learning.py), one part at a time; the
        profiles reach the controller for its next program start, and what was learned is an
        event like the loop's. A child that fails is one line and counted: the book is kept
        as it was, and the next part is learned from it."""
        async with self._learning:
            try:
                learned = await asyncio.to_thread(
                    learn_in_child, self.book, part, idle, self.profiles
                )
            except (LearningFailed, OSError, EOFError, pickle.PickleError) as exc:
                self.events["profile_learn_failed"] += 1
                log.error("learning program %d's part failed: %s", part.program, exc)
                return
            self.book = learned.book
            controller.set_profiles(self.book.profiles, self.book.timing)
        self._count(learned.failures)
        self._on_events(learned.events)

    def _count(self, failures: list[tuple[str, str]]) -> None:
        for counter, message in failures:
            self.events[counter] += 1
            log.error("%s", message)

    def _restore_profiles(self, controller) -> None:
        """The profiles kept from before, for the controller's first part; a file that does
        not read is one line each, the others are used."""
        try:
            profiles, lag, errors = self.profiles.load()
        except OSError as exc:  # the folder itself: unreadable
            profiles, lag, errors = {}, None, [f"{self.profiles.directory}: {exc.strerror or exc}"]
        for error in errors:
            self.events["profile_load_failed"] += 1
            log.error("%s; that profile is learned again", error)
        self.book.restore(profiles, lag)
        controller.set_profiles(self.book.profiles, self.book.timing)
        if profiles:
            log.info("%d learned profiles loaded from %s", len(profiles), self.profiles.directory)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks_in_flight.add(task)
        task.add_done_callback(self._tasks_in_flight.discard)

    async def stop(self) -> None:
        """Leave the feed at min(current, safe) first (the agent stopping is a fault like any
        other, docs/safety.md), then stop the loop. The write waits for nothing: the actuator
        closes (the control thread, still finishing its tick, can no longer write after it),
        the link sends it before anything queued, and the flush is bounded by the reply
        timeout (docs/service.md)."""
        if self.loop is None:
            return
        cfg, actuator = self.cfg, self.loop.actuator
        actuator.close(cfg.override_tag, cfg.safe_override_pct, self.clock.monotonic_ns())
        await asyncio.to_thread(self.loop.stop)  # the thread's join, off the event loop
        if self._teach_watch is not None:
            await cancel_and_wait([self._teach_watch])
        await actuator.writer.flush()
        if self._tasks_in_flight:
            await asyncio.wait(list(self._tasks_in_flight))
