"""Bounded queue between the socket and Redis, drained in batches into one pipeline of XADDs.

The reader never awaits Redis: it appends to the queue (``put_nowait``) and only waits when the
queue is full. One writer task takes everything queued (up to ``publish_batch_max``), sends it as
one pipeline of ``XADD key MAXLEN ~ N * field value ...`` and repeats, so batches grow by
themselves under load and stay small (low latency) when the feed is quiet. Order is preserved: a
batch that fails stays at the head of the queue and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingestor.backoff import Backoff

log = logging.getLogger("toss.publisher")

Fields = dict[Any, Any]  # field -> str | bytes | int
Entry = tuple[str, Fields, int]  # stream key, fields, approximate MAXLEN (0 = none)


class Publisher:
    def __init__(self, redis: Redis, max_queue: int, batch_max: int) -> None:
        self.redis = redis
        self.max_queue = max_queue
        self.batch_max = batch_max
        self._queue: deque[Entry] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.batches = 0
        self.redis_errors = 0
        self.redis_ok = True
        self.last_error = ""

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.max_queue

    def put_nowait(self, key: str, fields: Fields, maxlen: int = 0) -> None:
        """Queue one entry. Never refuses: the reader checks ``full`` after each WebSocket
        message and waits for room, so the queue exceeds its bound by at most one message."""
        self._queue.append((key, fields, maxlen))
        self._idle.clear()
        self._wake.set()

    async def wait_for_room(self) -> None:
        while self.full:
            self._space.clear()
            await self._space.wait()

    async def run(self) -> None:
        backoff = Backoff(0.05, 2.0)
        queue = self._queue
        while True:
            if not queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(queue), self.batch_max)
            batch = [queue[i] for i in range(n)]
            try:
                await self._write(batch)
            except (RedisError, OSError) as exc:
                self.redis_errors += 1
                self.last_error = type(exc).__name__
                if self.redis_ok:
                    log.warning(
                        "Redis write failed (%s): %d ticks queued, retrying", exc, len(queue)
                    )
                self.redis_ok = False
                await asyncio.sleep(backoff.next())
                continue
            if not self.redis_ok:
                log.info("Redis writes resumed")
            self.redis_ok = True
            backoff.reset()
            for _ in range(n):
                queue.popleft()
            self.written += n
            self.batches += 1
            if len(queue) < self.max_queue:
                self._space.set()

    async def _write(self, batch: list[Entry]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, fields, maxlen in batch:
            if maxlen:
                pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
            else:
                pipe.xadd(key, fields)
        await pipe.execute()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is written; False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
