"""Bounded queue between the socket and Redis, drained in batches into one pipeline of XADDs,
with a disk spool behind it so nothing received is lost while Redis is away or too slow.

- The reader never awaits Redis: ``put_nowait`` appends to the memory queue. When the queue is
  full because Redis is failing or stalled (a write taking longer than ``STALL_S``), entries go to
  the spool instead (and keep going there, in order, until the spool is drained), so the reader
  keeps reading the feed. When the queue is full while Redis is healthy, this process is simply
  at its limit: the reader waits for room (back-pressure) rather than spend CPU on the disk.
- One writer takes everything queued (up to ``batch_max``) and sends one pipeline of
  ``XADD key MAXLEN ~ N <id> field value ...``; batches grow under load and stay small when quiet.
  Memory first (it holds the oldest entries), then the spool, in order.
- Ids are assigned by the writer (``ms-seq``, increasing per stream) and kept with the entry, so a
  batch retried after a lost reply is rejected by Redis as already written: no duplicates.
- Reaching the spool size cap is the only way to lose entries: they are counted, logged and
  followed by a gap entry in their stream.
- Shutdown: ``flush()`` while the writer runs, then ``persist_rest()`` puts what Redis did not
  take into the spool, in order, for the next start to replay first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ingestor.aio import sleep_unless
from ingestor.backoff import Backoff
from ingestor.resp import RespConnection, pack_xadd
from ingestor.spool import Spool, encode

log = logging.getLogger("toss.publisher")

Fields = dict[Any, Any]  # field -> str | bytes | int
# (stream key, from_ms, to_ms, reason) -> the gap entry for that stream, or None (not a tick stream)
GapFields = Callable[[str, int, int, str], Fields | None]
SPOOL_FLUSH_BYTES = 1 << 20
STALL_S = 1.0  # a pipeline in flight longer than this counts as Redis being too slow


class Entry:
    __slots__ = ("fields", "id", "key", "maxlen", "pairs", "sent")

    def __init__(
        self,
        key: str,
        fields: Fields,
        maxlen: int,
        entry_id: str | None = None,
        pairs: bytes | None = None,
    ):
        self.key = key
        self.fields = fields
        self.maxlen = maxlen
        self.id = entry_id
        # times sent to Redis; an entry with an id from the spool may have been written already
        self.sent = 0 if entry_id is None else 1
        self.pairs = pairs  # pack_pairs(fields), when the producer had it at hand


class Publisher:
    def __init__(
        self,
        redis: Redis,
        max_queue: int,
        batch_max: int,
        spool: Spool | None = None,
        gap_fields: GapFields | None = None,
        fast: bool = True,
    ) -> None:
        self.redis = redis
        # XADD batches go through a lean RESP connection when the URL allows (plain TCP)
        self._resp = RespConnection(redis) if fast and RespConnection.usable_for(redis) else None
        self.max_queue = max_queue
        self.batch_max = batch_max
        self.spool = spool
        self._gap_fields = gap_fields
        self._queue: deque[Entry] = deque()
        self._spool_buf: list[bytes] = []
        self._spool_buf_bytes = 0
        self._spool_bytes = 0
        self.spooling = False
        self._opened = False
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._write_started = 0.0  # monotonic start of the pipeline in flight, 0 when none
        self._stopping = False
        self._stopped = asyncio.Event()
        self._ids: dict[str, tuple[int, int]] = {}
        self._drops: dict[str, list[Any]] = {}  # key -> [from_ms, to_ms, count, maxlen]
        self.written = 0
        self.batches = 0
        self.duplicates_skipped = 0
        self.spooled_total = 0
        self.replayed_total = 0
        self.dropped_total = 0
        self.redis_errors = 0
        self.redis_ok = True
        self.last_error = ""

    # --- reader side -----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes + self._spool_buf_bytes

    @property
    def stalled(self) -> bool:
        """Redis failing, or the write in flight taking too long."""
        started = self._write_started
        return not self.redis_ok or (started > 0 and time.monotonic() - started > STALL_S)

    @property
    def full(self) -> bool:
        if self.spooling:
            return self._spool_buf_bytes >= SPOOL_FLUSH_BYTES
        return len(self._queue) >= self.max_queue

    @property
    def idle(self) -> bool:
        return not self._queue and not self.spooling

    def put_nowait(
        self, key: str, fields: Fields, maxlen: int = 0, pairs: bytes | None = None
    ) -> None:
        """Queue one entry. Never refuses and never blocks: see ``full`` / ``wait_for_room``.
        ``pairs``: the fields already encoded with ``resp.pack_pairs`` (optional, saves work)."""
        if self.spooling or (
            self.spool is not None and len(self._queue) >= self.max_queue and self.stalled
        ):
            self._to_spool(key, fields, maxlen)
        else:
            if self._drops:
                self._emit_drop_gaps()
            self._queue.append(Entry(key, fields, maxlen, None, pairs))
        self._idle.clear()
        self._wake.set()

    def _to_spool(self, key: str, fields: Fields, maxlen: int) -> None:
        assert self.spool is not None
        if not self.spooling:
            log.warning("queue full (%d): spooling to %s", self.max_queue, self.spool.dir)
            self.spooling = True
        data = encode(key, maxlen, None, fields)
        if self.spool_bytes + len(data) > self.spool.max_bytes:
            self._count_drop(key, maxlen)
            return
        if self._drops:
            self._emit_drop_gaps()
        self._spool_buf.append(data)
        self._spool_buf_bytes += len(data)
        self.spooled_total += 1

    def _count_drop(self, key: str, maxlen: int) -> None:
        now = int(time.time() * 1000)
        d = self._drops.get(key)
        if d is None:
            log.error("spool full (%d MB): dropping entries of %s", self.spool_bytes >> 20, key)
            self._drops[key] = [now, now, 1, maxlen]
        else:
            d[1] = now
            d[2] += 1
        self.dropped_total += 1

    def _emit_drop_gaps(self) -> None:
        drops, self._drops = self._drops, {}
        for key, (from_ms, to_ms, count, maxlen) in drops.items():
            log.error("spool full: %d entries of %s lost (gap entry written)", count, key)
            fields = (
                self._gap_fields(key, from_ms, to_ms, f"spool full: {count} ticks lost")
                if self._gap_fields is not None
                else None
            )
            if fields is None:
                continue
            if self.spooling:
                data = encode(key, maxlen, None, fields)
                self._spool_buf.append(data)
                self._spool_buf_bytes += len(data)
            else:
                self._queue.append(Entry(key, fields, maxlen))

    async def wait_for_room(self) -> None:
        """Called by the reader when ``full``: write the spool buffer to disk, or wait for room
        (until Redis stalls, when there is a spool to take over)."""
        if self.spooling:
            await self._flush_spool_buf()
            return
        while len(self._queue) >= self.max_queue:
            if self.spool is not None and self.stalled:
                return
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), STALL_S / 4)

    async def _flush_spool_buf(self, front: bool = False) -> None:
        assert self.spool is not None
        async with self._flush_lock:
            if not self._spool_buf:
                return
            data = b"".join(self._spool_buf)
            self._spool_buf.clear()
            self._spool_buf_bytes = 0
            self._spool_bytes += len(data)
            await asyncio.to_thread(self.spool.append, data, front)

    # --- writer side -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Look at the spool a previous run left (disk I/O, off the loop): if there is one, it is
        replayed before anything new. ``run()`` does this itself when nobody did it before."""
        if self._opened:
            return
        self._opened = True
        if self.spool is not None:
            self._spool_bytes = await asyncio.to_thread(self.spool.size)
            self.spooling = self.spooling or bool(await asyncio.to_thread(self.spool.segments))

    def stop(self) -> None:
        """The writer ends after the batch in flight (call ``flush`` first to drain)."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        await self.open()
        backoff = Backoff(0.05, 2.0)
        queue = self._queue
        while not self._stopping:
            try:
                if queue:
                    n = min(len(queue), self.batch_max)
                    batch = list(itertools.islice(queue, n))
                    self._write_started = time.monotonic()
                    try:
                        await self._write(batch)
                    finally:
                        self._write_started = 0.0
                    for _ in range(n):
                        queue.popleft()
                    if len(queue) < self.max_queue:
                        self._space.set()
                elif self.spooling:
                    await self._replay_some()
                else:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
            except (RedisError, OSError) as exc:
                self.redis_errors += 1
                self.last_error = type(exc).__name__
                if self.redis_ok:
                    log.warning(
                        "Redis write failed (%s): %d queued, %d bytes spooled; retrying",
                        exc,
                        len(queue),
                        self.spool_bytes,
                    )
                self.redis_ok = False
                await sleep_unless(self._stopped, backoff.next())
                continue
            if not self.redis_ok:
                log.info("Redis writes resumed")
            self.redis_ok = True
            backoff.reset()

    async def _replay_some(self) -> None:
        assert self.spool is not None
        seg, records, pos = await asyncio.to_thread(self.spool.read, self.batch_max)
        if records:
            batch = [Entry(r.key, r.fields, r.maxlen, r.id) for r in records]
            await self._write(batch)
            self.replayed_total += len(batch)
        if seg is not None and (records or pos):
            await asyncio.to_thread(self.spool.commit, seg, pos)
            self._spool_bytes = await asyncio.to_thread(self.spool.size)
        if records:
            return
        if self._spool_buf:  # the disk part is drained; what is still in memory goes next
            await self._flush_spool_buf()
            return
        if await asyncio.to_thread(self.spool.finish_if_drained) and not self._spool_buf:
            self.spooling = False
            self._spool_bytes = 0
            log.info("spool drained: %d entries replayed", self.replayed_total)

    async def _write(self, batch: list[Entry]) -> None:
        todo = batch
        while todo:
            await self._assign_ids(todo)
            for e in todo:
                e.sent += 1  # before execute: a lost reply may still mean it was written
            results = await self._xadd_all(todo)
            retry: list[Entry] = []
            for i in [i for i, res in enumerate(results) if isinstance(res, ResponseError)]:
                e, res = todo[i], results[i]
                if "equal or smaller" not in str(res):
                    raise res
                if e.sent > 1:
                    # written by an earlier attempt whose reply was lost
                    self.duplicates_skipped += 1
                    continue
                log.warning("%s has newer ids than this writer: another writer? re-reading", e.key)
                self._ids.pop(e.key, None)
                e.id = None
                e.sent = 0
                retry.append(e)
            self.written += len(todo) - len(retry)
            self.batches += 1
            todo = retry

    async def _xadd_all(self, todo: list[Entry]) -> list[Any]:
        if self._resp is not None:
            packed = [pack_xadd(e.key, e.id or "*", e.maxlen, e.fields, e.pairs) for e in todo]
            return await self._resp.execute(packed, len(todo))
        pipe = self.redis.pipeline(transaction=False)
        for e in todo:
            if e.maxlen:
                pipe.xadd(e.key, e.fields, id=e.id or "*", maxlen=e.maxlen, approximate=True)
            else:
                pipe.xadd(e.key, e.fields, id=e.id or "*")
        return await pipe.execute(raise_on_error=False)

    async def aclose(self) -> None:
        if self._resp is not None:
            await self._resp.close()

    async def _assign_ids(self, batch: list[Entry]) -> None:
        unknown = {e.key for e in batch if e.id is None and e.key not in self._ids}
        if unknown:
            pipe = self.redis.pipeline(transaction=False)
            keys = sorted(unknown)
            for key in keys:
                pipe.xinfo_stream(key)
            infos = await pipe.execute(raise_on_error=False)
            for key, info in zip(keys, infos, strict=True):
                if isinstance(info, ResponseError):
                    if "no such key" not in str(info).lower():
                        raise info
                    self._ids[key] = (0, 0)
                else:
                    last = info.get("last-generated-id", b"0-0")
                    self._ids[key] = _split(last.decode() if isinstance(last, bytes) else last)
        now = int(time.time() * 1000)
        ids = self._ids
        for e in batch:
            if e.id is None:
                ms, seq = ids[e.key]
                ms, seq = (now, 0) if now > ms else (ms, seq + 1)
                ids[e.key] = (ms, seq)
                e.id = f"{ms}-{seq}"
            else:
                cur = ids.get(e.key)
                got = _split(e.id)
                if cur is None or got > cur:
                    ids[e.key] = got

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued (and spooled) is written; False if the time ran out."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.idle:
                    await self._idle.wait()
        return self.idle

    async def persist_rest(self) -> int:
        """After the writer has stopped: put what Redis did not take into the spool, in order,
        for the next start to replay first. Returns the entries that could not be kept."""
        if self.idle:
            return 0
        if self.spool is None:
            return len(self._queue)
        if self._drops:
            self._emit_drop_gaps()
        if self._queue:
            data = b"".join(encode(e.key, e.maxlen, e.id, e.fields) for e in self._queue)
            self._queue.clear()
            await asyncio.to_thread(self.spool.append, data, True)
        await self._flush_spool_buf()
        log.warning("Redis did not take everything: the rest waits in %s", self.spool.dir)
        return 0


def _split(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
