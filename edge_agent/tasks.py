"""Stopping asyncio tasks for certain.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives just as the awaitable
it wraps completes (fixed in 3.12, cpython gh-86296). pymodbus waits for replies and connections
with `wait_for`, so a single `cancel()` may leave a polling loop running and a shutdown that
awaits it hanging. `cancel_and_wait` cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task], retry_s: float = 0.05) -> None:
    """Cancel the tasks and return once all have ended, re-cancelling any that carry on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)


async def run_together(coros) -> None:
    """Run coroutines as tasks until one fails or the caller is cancelled; then stop the rest.

    Unlike `asyncio.TaskGroup`, a child that swallowed one cancellation is cancelled again."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        await cancel_and_wait(tasks)
