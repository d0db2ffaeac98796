"""Keep a link up: open it, run a session on it, and after a failure or a loss try again
after a jittered backoff. Shared by the publisher and the collector."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..backoff import Backoff
from . import UpstreamError


class Link(Protocol):
    """What a session needs of a connection (`MqttLink`, `FileLink`)."""

    closed: asyncio.Future
    where: str  # for log lines
    # Whether a publish's acknowledgement means stored at the destination (a file after
    # fsync) or only passed on (a broker: the publisher then awaits the collector's ack,
    # received through `subscribe` and `on_message`, which such a link has).
    acks_stored: bool

    async def open(self) -> None: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future: ...

    async def close(self) -> None: ...


async def stay_connected(
    make_link: Callable[[], Awaitable[Link]],
    session: Callable[[Link], Awaitable[None]],
    backoff: Backoff,
    counters: Counter[str],
    note: Callable[[str], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run until cancelled. `session` resets the backoff once its link has proved itself;
    `note` gets one line per failure (`connect_failures`, `disconnects` are counted)."""
    while True:
        link = await make_link()
        try:
            await link.open()
        except UpstreamError as exc:
            counters["connect_failures"] += 1
            note(f"unreachable: {exc}")
            await sleep(backoff.next_delay())
            continue
        counters["connects"] += 1
        try:
            await session(link)
        except UpstreamError as exc:
            counters["disconnects"] += 1
            note(f"lost: {exc}")
        finally:
            await link.close()
        await sleep(backoff.next_delay())
