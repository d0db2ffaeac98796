"""The agent as a systemd service (docs/service.md): readiness, the watchdog and the status
line over sd_notify, SIGTERM (a graceful stop), SIGHUP (reload the configuration) and the
metrics endpoint around one `Agent` at a time.

A reload that changes anything runs the agent's whole stop (the feed made safe, the open batch
spooled, the death published) and starts a new agent on the new configuration in the same
process: a new boot with its own birth, so the plant decodes every frame with the channel
table it was made with, and the spool (the same file) keeps every payload not yet sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping

from .config import AgentConfig, ConfigError, load_config
from .logs import RepeatLimit
from .metrics import MetricsServer
from .sdnotify import Notifier
from .service import Agent
from .tasks import cancel_and_wait
from .upstream import UpstreamError

log = logging.getLogger(__name__)

#: While the start waits for the controller, systemd is told every this often that the agent
#: is alive and needs longer (EXTEND_TIMEOUT_USEC), so TimeoutStartSec catches a hung start
#: but not a machine that is switched off.
START_EXTEND_EVERY_S = 10.0
#: Without a systemd watchdog, the STATUS line is refreshed this often.
STATUS_EVERY_S = 10.0


class Watchdog:
    """Whether each running part of the agent moved since the last look (sans-IO: the
    caller looks on its schedule). A part reported as None is not running (starting,
    stopping, disabled) and is not judged."""

    def __init__(self):
        self._last: dict[str, int] = {}

    def stalled(self, progress: Mapping[str, int | None]) -> list[str]:
        stalled = [
            name
            for name, count in progress.items()
            if count is not None and self._last.get(name) == count
        ]
        self._last = {name: count for name, count in progress.items() if count is not None}
        return stalled


class AgentService:
    def __init__(
        self,
        path: str,
        config: AgentConfig,
        *,
        env: Mapping[str, str] = os.environ,
        connect: Mapping[str, Callable] | None = None,
        load: Callable[[str], AgentConfig] = load_config,
        log_limit: RepeatLimit | None = None,
    ):
        self.path = path
        self.config = config
        self.notifier = Notifier(env)
        self.connect = connect  # for tests: Agent's
        self.load = load
        self.log_limit = log_limit
        self.agent: Agent | None = None
        self.reloads = {"applied": 0, "refused": 0, "unchanged": 0}
        self._next: Agent | None = None  # made by a reload, run when the current one stops
        self._stopping = False
        self._agent_stop = asyncio.Event()
        self._background: set[asyncio.Task] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        metrics = MetricsServer(self)
        metrics.listen(self.config.service.metrics_listen)
        watch = asyncio.create_task(self._watch(), name="watchdog")
        try:
            self._next = Agent(self.config, connect=self.connect)
            while True:
                self.agent, self._next = self._next, None
                self._agent_stop = asyncio.Event()
                announce = asyncio.create_task(self._announce(self.agent), name="ready")
                try:
                    await self.agent.run(self._agent_stop)
                finally:
                    await cancel_and_wait([announce])
                if self._stopping or self._next is None:
                    return
                self.config = self._next.config
                settings = self.config.service
                logging.getLogger().setLevel(settings.log_level.upper())
                if self.log_limit is not None:
                    self.log_limit.burst = settings.log_repeat_burst
                    self.log_limit.window_s = settings.log_repeat_window_s
                metrics.listen(settings.metrics_listen)
                log.info("configuration %s applied: starting again with it", self.path)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await cancel_and_wait([watch, *self._background])
            metrics.close()
            self.notifier.close()

    def stop(self) -> None:
        """SIGTERM: the agent's stop, in order (docs/service.md)."""
        if not self._stopping:
            log.info("stopping: feed to the safe override, open batch to the spool, death")
            self.notifier.stopping("stopping")
        self._stopping = True
        self._agent_stop.set()

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> bool:
        """Read the configuration file again; apply it if it is valid and differs. An invalid
        one is refused with its one-line error and the running agent carries on."""
        self.notifier.reloading(self._monotonic_ns())
        try:
            config = await asyncio.to_thread(self.load, self.path)
        except ConfigError as exc:
            return self._refuse(str(exc))
        except Exception as exc:  # a bug: refused and counted all the same, never a dead task
            return self._refuse(f"{self.path}: {_one_line(exc)}")
        if self._stopping or self.agent is None:
            return False
        if config.spool.path != self.config.spool.path:
            return self._refuse(
                f"{self.path}: [spool] path changed ({self.config.spool.path} -> "
                f"{config.spool.path}); restart the service to move the spool"
            )
        if config == self.config:
            self.reloads["unchanged"] += 1
            log.info("reload: %s unchanged; nothing to do", self.path)
            self._ready_again()
            return False
        try:  # what only making the agent finds (an unusable password or TLS file)
            self._next = Agent(config, connect=self.connect)
        except (ConfigError, UpstreamError) as exc:
            return self._refuse(str(exc))
        except Exception as exc:
            return self._refuse(f"{self.path}: making the agent: {_one_line(exc)}")
        self.reloads["applied"] += 1
        log.info("reload: %s changed; stopping the agent to start it with the new one", self.path)
        self.agent.stop_reason = "reload"
        self._agent_stop.set()
        return True

    def _refuse(self, error: str) -> bool:
        self.reloads["refused"] += 1
        log.error("reload refused, the running configuration stays: %s", error)
        self._ready_again()
        return False

    def _ready_again(self) -> None:
        """Ends systemd's reloading state (253+) when the agent runs on unchanged."""
        if self.agent is not None and self.agent.up.is_set():
            self.notifier.ready(self.status_line())

    def _monotonic_ns(self) -> int:
        return self.agent.clock.monotonic_ns() if self.agent else 0

    async def _announce(self, agent: Agent) -> None:
        """READY=1 once the agent is up; until then, alive and waiting (EXTEND_TIMEOUT)."""
        while True:
            try:
                await asyncio.wait_for(agent.up.wait(), START_EXTEND_EVERY_S)
                break
            except TimeoutError:
                self.notifier.extend_start(
                    3 * START_EXTEND_EVERY_S,
                    f"starting: waiting for {agent.controller_source.stats().where}",
                )
        self.notifier.ready(self.status_line())
        log.info("ready: %s", self.status_line())

    async def _watch(self) -> None:
        """WATCHDOG=1 at half systemd's period, only while every running part progresses:
        a stalled control loop or poller (or a blocked event loop, which runs this) stops the
        pings and systemd restarts the agent. The STATUS line rides along."""
        interval = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else STATUS_EVERY_S
        watchdog = Watchdog()
        reported: list[str] = []
        status = ""
        while True:
            await asyncio.sleep(interval)
            agent = self.agent
            if agent is None:
                continue
            stalled = watchdog.stalled(agent.progress())
            if stalled and stalled != reported:
                log.error(
                    "watchdog: no progress in the %s for %.1f s; withholding the ping "
                    "(systemd restarts the agent if it stays so)",
                    " and the ".join(stalled),
                    interval,
                )
            reported = stalled
            if self.notifier.watchdog_s and not stalled:
                self.notifier.watchdog()
            line = self.status_line()
            if line != status:
                self.notifier.status(line)
                status = line

    def status_line(self) -> str:
        """systemd's one-line STATUS: what `systemctl status` shows under the unit."""
        agent = self.agent
        if agent is None:
            return "starting"
        parts = [f"{s.name} {s.state}" for s in agent.source_stats()]
        if agent.control is not None:
            cfg, control = agent.config.control, agent.control
            override = control.actuator.value.get(cfg.override_tag)
            parts.append(
                f"control {control.controller.state.value}"
                + (f" at {override:g} %" if override is not None else "")
            )
        if agent.publisher is not None:
            parts.append(f"upstream {'up' if agent.publisher.connected else 'DOWN'}")
        parts.append(
            f"{agent.journal.frames_stored} payloads stored, last seq {agent.journal.last_seq}"
        )
        return ", ".join(parts)


def _one_line(exc: BaseException) -> str:
    """An unexpected exception as the one line a log keeps: its type and first line."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
