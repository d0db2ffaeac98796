"""cancel_and_wait and run_together stop tasks that swallow a cancellation, as pymodbus's
`wait_for` can on Python 3.11."""

import asyncio

import pytest

from edge_agent.tasks import cancel_and_wait, run_together

pytestmark = pytest.mark.timeout(10)


async def stubborn(swallow: int, log: list):
    """Loops like a poller whose first `swallow` cancellations were lost inside a library."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            log.append("cancel")
            if len(log) > swallow:
                raise


def test_a_task_that_swallows_cancellations_is_cancelled_again_until_it_ends():
    async def main():
        log = []
        task = asyncio.create_task(stubborn(2, log))
        await asyncio.sleep(0.02)
        await cancel_and_wait([task], retry_s=0.01)
        return task, log

    task, log = asyncio.run(main())
    assert task.cancelled()
    assert log == ["cancel"] * 3


def test_run_together_stops_every_child_when_cancelled_even_a_stubborn_one():
    async def main():
        log, polite = [], []

        async def polite_child():
            try:
                await asyncio.sleep(60)
            finally:
                polite.append("ended")

        outer = asyncio.create_task(
            run_together([("stubborn", stubborn(1, log)), ("polite", polite_child())])
        )
        await asyncio.sleep(0.02)
        await cancel_and_wait([outer], retry_s=0.01)
        remaining = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return outer, log, polite, remaining

    outer, log, polite, remaining = asyncio.run(main())
    assert outer.cancelled()
    assert log == ["cancel", "cancel"]
    assert polite == ["ended"]
    assert remaining == []


def test_run_together_raises_a_childs_failure_after_stopping_the_others():
    async def main():
        polite = []

        async def failing():
            await asyncio.sleep(0.01)
            raise ValueError("bad reply")

        async def polite_child():
            try:
                await asyncio.sleep(60)
            finally:
                polite.append("ended")

        with pytest.raises(ValueError, match="bad reply"):
            await run_together([("failing", failing()), ("polite", polite_child())])
        return polite

    assert asyncio.run(main()) == ["ended"]
