"""`edge-agent probe` of the sensor bridge: the board's identity and one value per channel.

The bridge is probed by the agent's own `BridgeSource`, run as the agent runs it: the port
opened (exclusively: while the agent runs it holds the port, and the probe says so), the
board identified, its rates set, its clock aligned, the stream started; the latest calibrated
sample of each configured channel is kept. Closing stops the stream (the source's own close).
A sans-IO `stream_row()` makes each row.

Never writes to the machine: the commands it sends (IDENTIFY, STOP, PING, SET_RATES, START)
go to the sensor board, as the agent's do.
"""

from __future__ import annotations

import asyncio
import re
import time

from firmware_bridge import protocol

from ..clock import SystemClock
from ..samples import Quality, Sample
from ..sources.bridge import COMMAND_TRIES, IDENTIFY_WAIT_S, BridgeSource
from .report import GOOD, Report, bad, number, with_unit

COLUMNS = ("channel", "input", "kind", "value", "quality", "age", "control")
#: The board's inputs by index (docs/bridge-host.md).
INPUTS = {0: "0 adc", 1: "1 accel x", 2: "2 accel y", 3: "3 accel z"}
#: The handshake after IDENTIFY is four commands (STOP, PING, SET_RATES, START), each tried up
#: to COMMAND_TRIES times.
_COMMANDS_AFTER_IDENTIFY = 4


def stream_row(
    name: str, index: int, kind: str, unit: str, sample: Sample | None, now_ns: int, role: str = ""
) -> tuple[tuple[str, ...], bool]:
    """One channel's row under `COLUMNS` (its latest sample, and how old it is) and whether it
    is GOOD."""
    head = (name, INPUTS.get(index, str(index)), kind)
    if sample is None:
        return (*head, "", bad("no sample yet"), "", role), False
    age_ms = max(0, now_ns - sample.stamp_ns) / 1e6
    good = sample.quality is Quality.GOOD
    return (
        *head,
        with_unit(number(sample.value, 7), unit),
        GOOD if good else bad(sample.quality.name.lower()),
        f"{age_ms:.0f} ms",
        role,
    ), good


class BridgeProbe:
    """The sensor bridge, streaming for as long as the probe runs."""

    def __init__(self, cfg, roles: dict[str, str], log_reason=lambda: ""):
        """`log_reason()`: the source's last warning (it logs why a session ended)."""
        self.cfg = cfg
        self.roles = roles
        self.log_reason = log_reason
        self.clock = SystemClock()
        self.latest: dict[str, Sample] = {}
        self.streams = cfg.streams()
        self.source = BridgeSource(cfg, self.clock, self._take)
        self._task: asyncio.Task | None = None

    def _take(self, samples: list[Sample]) -> None:
        for sample in samples:
            self.latest[sample.channel] = sample

    @property
    def title(self) -> str:
        identity = self.source.identity
        board = (
            f"board {protocol.printable(identity['board'])}, firmware "
            f"{protocol.printable(identity['firmware'])}, protocol {identity['protocol']}"
            if identity
            else "no identity"
        )
        return (
            f"bridge {self.cfg.port} ({board}): {len(self.cfg.channels)} inputs at "
            f"{self.cfg.sample_hz} Hz in blocks of {self.cfg.block_samples}"
        )

    async def round(self) -> Report:
        if self._task is None:
            self._task = asyncio.create_task(self.source.run(), name="probe-bridge")
        if not await self.source.wait_ready(IDENTIFY_WAIT_S) or not await self._streaming():
            # The source logs why a session ended: "bridge PORT: cannot open (...); reconnecting"
            said = self.log_reason().removeprefix(f"bridge {self.cfg.port}: ")
            why = re.sub(r"; (reconnecting|retrying slowly)$", "", said) or self.source.state
            return Report(
                self.title, error=f"bridge {self.cfg.port}: not streaming ({why}); nothing read"
            )
        await self._every_channel()
        report = Report(self.title, COLUMNS)
        now = self.clock.stamp_ns()
        for name, channel, kind, _ in self.streams:
            row, good = stream_row(
                name,
                channel.index,
                kind,
                channel.unit,
                self.latest.get(name),
                now,
                self.roles.get(name, ""),
            )
            report.rows.append(row)
            report.failed += not good
        return report

    async def _streaming(self) -> bool:
        """Whether the stream runs, waiting for the rest of the handshake (every command
        may take all its tries)."""
        bound_s = _COMMANDS_AFTER_IDENTIFY * COMMAND_TRIES * self.cfg.command_timeout_s
        deadline = time.monotonic() + bound_s
        while self.source.state != "streaming" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.source.state == "streaming"

    async def _every_channel(self) -> None:
        """Wait for a sample of every channel: two blocks (the first may be partly before
        the stream started)."""
        deadline = time.monotonic() + 2 * self.cfg.block_samples / self.cfg.sample_hz + 0.1
        names = [name for name, *_ in self.streams]
        while not all(n in self.latest for n in names) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
