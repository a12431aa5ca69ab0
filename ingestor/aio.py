"""Small asyncio helpers shared by the ingestor and the workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

log = logging.getLogger("toss.aio")


async def sleep_unless(event: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s`` or until ``event`` is set; True when the event is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), delay_s)
    return event.is_set()


async def finish(
    tasks: Iterable[asyncio.Task[object]], timeout_s: float, grace_s: float = 0.2
) -> None:
    """Let tasks that watch a stop event end by themselves within ``grace_s``, then cancel the
    rest; never wait longer than ``timeout_s`` for a task (a library may swallow a cancellation,
    so every long-lived task also checks its stop event)."""
    pending = {t for t in tasks if not t.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    for t in pending:
        t.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=timeout_s)
        for t in stuck:
            log.warning("task %s did not stop; leaving it", t.get_name())
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())
