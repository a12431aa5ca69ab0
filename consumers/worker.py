"""A consumer-group worker: XREADGROUP in batches, run the handler, XACK after success.

- groups are created when missing (MKSTREAM; new entries by default, ``from_start`` for history)
  and recreated when the stream or group disappears (NOGROUP)
- a failing batch stays pending; pending entries idle longer than ``retry_idle_ms`` (own) or
  ``claim_idle_ms`` (other consumers: stopped or dead) are claimed with XCLAIM, which counts the
  delivery; an entry delivered ``max_deliveries`` times goes to ``{prefix}:dead:{market}`` with the
  error and its original fields, then is acked. Nothing is dropped silently.
- consumers that are gone and own nothing are removed from the group
- heartbeat ``{prefix}:health:consumer:{group}:{name}`` with a TTL
- ``stop()``: stop reading, finish and ack the in-flight batch within ``shutdown_s``, delete the
  heartbeat
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from consumers.handlers import Context, resolve
from consumers.tick import Tick
from ingestor.aio import finish, sleep_unless
from ingestor.backoff import Backoff
from ingestor.health import ProcessStats, RateMeter, now_ms, to_fields, ttl_s
from ingestor.keys import MARKETS, Keys
from ingestor.levels import consumer_level
from ingestor.redisconn import async_client
from ingestor.resp import RespConnection, pack_command
from ingestor.settings import Settings
from ingestor.ticks import as_str

log = logging.getLogger("toss.consumer")


@dataclass
class WorkerOptions:
    group: str
    handler: Any = "print"
    markets: tuple[str, ...] = MARKETS
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch: int | None = None
    from_start: bool = False
    burst: bool = False  # exit when there is nothing left to do (tests, one-off replays)
    retry_idle_ms: int = 1000
    shutdown_s: float = 10.0


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


class Worker:
    def __init__(self, settings: Settings, options: WorkerOptions, redis: Redis | None = None):
        self.settings = settings
        self.opt = options
        self.keys = Keys(settings.key_prefix)
        self.redis = redis or async_client(
            settings,
            socket_timeout=settings.consumer_block_ms / 1000 + settings.redis_socket_timeout_s,
        )
        # XREADGROUP replies are parsed here (lists from hiredis), not by redis-py's callbacks
        self.redis.set_response_callback("XREADGROUP", _raw_reply)
        self._resp = RespConnection(self.redis) if RespConnection.usable_for(self.redis) else None
        self._deferred: list[tuple[str, list[bytes]]] = []  # acks that ride with the next read
        # reads sent over the lean connection and not yet handled, with the acks each carried
        self._reads: deque[tuple[asyncio.Future[list[Any]], list[tuple[str, list[bytes]]]]] = (
            deque()
        )
        self._read_ahead = True
        self._handling = False  # a batch is being handled
        self._ahead_wanted = False  # a reply began while handling: send the next read after
        self.ctx = Context(settings, self.redis)
        self.handler = resolve(options.handler, self.ctx)
        self.ignores_gaps = bool(getattr(self.handler, "ignores_gaps", False))
        call = type(self.handler).__call__ if not inspect.isfunction(self.handler) else None
        self.is_async = inspect.iscoroutinefunction(self.handler) or (
            call is not None and inspect.iscoroutinefunction(call)
        )
        self.streams = {self.keys.ticks(m): m for m in options.markets}
        self.batch = options.batch or settings.consumer_batch
        self.health_key = self.keys.health_consumer(options.group, options.name)
        self.processed = 0
        self.batches = 0
        self.pending_age_s = 0.0
        self.errors = 0
        self.dead_lettered = 0
        self.reclaimed = 0
        self.pending = 0
        self.lag = 0
        self.status = "starting"
        self.last_errors: OrderedDict[str, str] = OrderedDict()  # entry id -> last error
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None

    def stop(self) -> None:
        self._stop.set()

    async def __aenter__(self) -> Worker:
        """``async with Worker(settings, options) as w``: reads until the block ends."""
        self._task = asyncio.create_task(self.run(), name=f"worker-{self.opt.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        assert self._task is not None
        await self._task
        await self.redis.aclose()

    # --- groups -----------------------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        start = "0" if self.opt.from_start else "$"
        for key in self.streams:
            try:
                await self.redis.xgroup_create(key, self.opt.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- main loop --------------------------------------------------------------------------------

    async def run(self) -> int:
        await self.ensure_groups()
        self.status = "running"
        hb = asyncio.create_task(self._heartbeat_loop())
        backoff = Backoff(0.1, 5.0)
        next_claim = 0.0
        try:
            while not self._stop.is_set():
                try:
                    did = 0
                    if time.monotonic() >= next_claim:
                        # the reclaim must only see entries this worker has handled
                        self._read_ahead = False
                        did += await self._drain_reads()
                        did += await self.reclaim()
                        self._read_ahead = True
                        next_claim = time.monotonic() + min(1.0, self.opt.retry_idle_ms / 2000)
                    did += await self.read_once()
                    backoff.reset()
                    if self.opt.burst and did == 0:
                        await self.flush_acks()
                        if await self._nothing_pending():
                            break
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                        log.warning("group or stream disappeared: recreating %s", self.opt.group)
                        await self.ensure_groups()
                        continue
                    raise
                except (RedisError, OSError) as exc:
                    log.warning("Redis error: %s", exc)
                    self.status = "redis-down"
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), backoff.next())
                    self.status = "running"
        finally:
            self.status = "stopped"
            self._stop.set()
            with contextlib.suppress(RedisError, OSError):
                await self._drain_reads()  # what was read ahead is handled, not left pending
                await self.flush_acks()
            await finish([hb], 5.0)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.health_key)
            if self._resp is not None:
                await self._resp.close()
        return 0

    async def read_once(self) -> int:
        """Read one batch per stream and handle it; the number of entries handled.

        Over the lean RESP connection, the next read is sent the moment this one's reply starts
        to arrive: Redis prepares the next batch while this one is parsed and handled. The acks
        of handled batches travel with the next read."""
        if self._resp is None:
            resp = await self.redis.execute_command(*self._read_command())  # type: ignore[no-untyped-call]
            return await self._process(resp)
        if not self._reads:
            await self._resp.connect()
            self._send_read()
        elif self._ahead_wanted:  # its reply began while the last batch was being handled
            self._read_next()
        fut, acks = self._reads[0]
        try:
            replies = await self._resp.replies(fut)
        except BaseException:
            self._abandon_reads()
            raise
        self._reads.popleft()
        for reply in replies:
            if isinstance(reply, Exception):
                self._deferred[:0] = acks
                await self._resp.close()  # a read sent ahead goes with it
                self._abandon_reads()
                raise reply
        self._handling = True
        try:
            return await self._process(replies[-1])
        finally:
            self._handling = False

    async def _drain_reads(self) -> int:
        """Handle what reads already sent bring, without sending more."""
        n = 0
        while self._reads:
            n += await self.read_once()
        return n

    def _read_command(self) -> tuple[Any, ...]:
        block = self.settings.consumer_block_ms if not self.opt.burst else 50
        keys = list(self.streams)
        return (
            "XREADGROUP", "GROUP", self.opt.group, self.opt.name, "COUNT", self.batch,
            "BLOCK", block, "STREAMS", *keys, *([">"] * len(keys)),
        )  # fmt: skip

    def _send_read(self) -> None:
        """Send the acks waiting to go and one XREADGROUP, without waiting for the reply."""
        assert self._resp is not None
        acks, self._deferred = self._deferred, []
        cmds = [pack_command("XACK", key, self.opt.group, *ids) for key, ids in acks]
        cmds.append(pack_command(*self._read_command()))
        try:
            fut = self._resp.send_nowait(cmds, len(cmds), on_start=self._read_next)
        except (RedisError, OSError):
            self._deferred[:0] = acks  # XACK is idempotent: send them again next time
            raise
        self._reads.append((fut, acks))

    def _read_next(self) -> None:
        """A read's reply is arriving: send the next read now, so Redis prepares it while this
        one is parsed and handled. At most one read ahead of the batch being handled: while a
        batch is handled this waits for ``read_once``. None while stopping or before a reclaim."""
        self._ahead_wanted = False
        if not self._read_ahead or self._stop.is_set() or len(self._reads) > 1:
            return
        if self._handling:
            self._ahead_wanted = True
            return
        with contextlib.suppress(RedisError, OSError):  # it shows when that reply is awaited
            self._send_read()

    def _abandon_reads(self) -> None:
        """The connection failed: acks that went with reads in flight go again with the next
        read; what those reads delivered stays pending and is reclaimed."""
        while self._reads:
            _, acks = self._reads.popleft()
            self._deferred[:0] = acks

    async def _process(self, resp: Any) -> int:
        n = 0
        # RESP3 gives a map of stream -> entries, RESP2 a list of [stream, entries]
        for key, entries in resp.items() if isinstance(resp, dict) else resp or []:
            key = as_str(key)
            market = self.streams[key]
            # raw reply: [[id, [field, value, ...]], ...]; a trimmed entry has no fields
            ticks = [Tick(market, i, f) for i, f in entries if f is not None]
            n += len(ticks)
            await self._handle(key, ticks, defer_ack=self._resp is not None)
        return n

    async def _ack(self, key: str, ticks: list[Tick]) -> None:
        ids = [t.id_bytes for t in ticks]
        if self._resp is not None:
            [reply] = await self._resp.execute([pack_command("XACK", key, self.opt.group, *ids)], 1)
            if isinstance(reply, Exception):
                raise reply
        else:
            await self.redis.xack(key, self.opt.group, *ids)

    async def flush_acks(self) -> None:
        """Send acks still waiting for the next read (before stopping or checking pending)."""
        if self._resp is None or not self._deferred:
            return
        acks, self._deferred = self._deferred, []
        cmds = [pack_command("XACK", key, self.opt.group, *ids) for key, ids in acks]
        try:
            replies = await self._resp.execute(cmds, len(cmds))
        except BaseException:
            self._deferred[:0] = acks
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def _call(self, ticks: list[Tick]) -> str:
        """Run the handler; '' on success, else the error (one line)."""
        todo = [t for t in ticks if not t.is_gap] if self.ignores_gaps else ticks
        try:
            if todo:
                if self.is_async:
                    await self.handler(todo)
                else:
                    await asyncio.to_thread(self.handler, todo)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        return ""

    async def _handle(self, key: str, ticks: list[Tick], defer_ack: bool = False) -> None:
        """Handle a batch and ack what succeeded. When the batch fails, each entry is tried on its
        own, so one poison entry does not hold back (or dead-letter) its neighbours."""
        if not ticks:
            return
        error = await self._call(ticks)
        self.batches += 1
        done = ticks
        if error:
            self.errors += 1
            log.warning("handler failed on %d entries of %s: %s", len(ticks), key, error)
            done = []
            for t in ticks if len(ticks) > 1 else []:
                one = await self._call([t])
                if one:
                    self.last_errors[t.stream_id] = one
                else:
                    done.append(t)
            if len(ticks) == 1:
                self.last_errors[ticks[0].stream_id] = error
            while len(self.last_errors) > 10_000:
                self.last_errors.popitem(last=False)
        if done:
            if defer_ack:
                self._deferred.append((key, [t.id_bytes for t in done]))
            else:
                await self._ack(key, done)
            self.processed += len(done)
            if self.last_errors:
                for t in done:
                    self.last_errors.pop(t.stream_id, None)

    # --- reclaim, retry, dead letters -------------------------------------------------------------

    async def reclaim(self) -> int:
        """Retry own failed entries, take over entries of stopped consumers, dead-letter poison."""
        # handled entries whose acks wait for the next read would look like own failed entries
        await self.flush_acks()
        done = 0
        for key, market in self.streams.items():
            rows: Any = await self.redis.xpending_range(
                key,
                self.opt.group,
                min="-",
                max="+",
                count=self.batch,
                idle=min(self.opt.retry_idle_ms, self.settings.claim_idle_ms),
            )
            mine_ids: list[Any] = []
            claim: list[Any] = []
            dead: list[tuple[str, int]] = []
            for row in rows:
                eid = as_str(row["message_id"])
                owner = as_str(row["consumer"])
                idle = int(row["time_since_delivered"])
                if owner != self.opt.name and idle < self.settings.claim_idle_ms:
                    continue
                if int(row["times_delivered"]) >= self.settings.max_deliveries:
                    dead.append((eid, int(row["times_delivered"])))
                else:
                    (mine_ids if owner == self.opt.name else claim).append(eid)
            if dead:
                done += await self._dead_letter(key, market, dead)
            ids = mine_ids + claim
            if not ids:
                continue
            entries: Any = await self.redis.xclaim(
                key, self.opt.group, self.opt.name, min_idle_time=0, message_ids=ids
            )
            got = {as_str(i): f for i, f in entries if f is not None}
            missing = [i for i in ids if i not in got]
            if missing:  # trimmed from the stream: nothing left to process
                await self.redis.xack(key, self.opt.group, *missing)
            self.reclaimed += len(claim)
            ticks = [Tick(market, i, got[i]) for i in ids if i in got]
            await self._handle(key, ticks)
            done += len(ids)
        await self._forget_gone_consumers()
        return done

    async def _dead_letter(self, key: str, market: str, dead: list[tuple[str, int]]) -> int:
        ids: list[Any] = [i for i, _ in dead]
        entries: Any = await self.redis.xclaim(
            key, self.opt.group, self.opt.name, min_idle_time=0, message_ids=ids
        )
        got = {as_str(i): f for i, f in entries if f is not None}
        pipe = self.redis.pipeline(transaction=False)
        for eid, times in dead:
            fields = dict(got.get(eid) or {b"missing": b"1"})
            err = self.last_errors.pop(eid, "unknown (failed in another consumer)")
            fields.update(
                {
                    b"error": err.encode(),
                    b"stream": key.encode(),
                    b"stream_id": eid.encode(),
                    b"group": self.opt.group.encode(),
                    b"deliveries": str(times).encode(),
                    b"dead_ms": str(now_ms()).encode(),
                }
            )
            pipe.xadd(
                self.keys.dead(market), fields, maxlen=self.settings.dead_maxlen, approximate=True
            )
        pipe.xack(key, self.opt.group, *ids)
        await pipe.execute()
        self.dead_lettered += len(ids)
        log.error("dead-lettered %d entries of %s after %d deliveries", len(ids), key, dead[0][1])
        return len(ids)

    async def _forget_gone_consumers(self) -> None:
        limit = max(self.settings.claim_idle_ms * 2, 60_000)
        for key in self.streams:
            for c in await self.redis.xinfo_consumers(key, self.opt.group):
                name = as_str(c["name"])
                if name != self.opt.name and int(c["pending"]) == 0 and int(c["idle"]) > limit:
                    await self.redis.xgroup_delconsumer(key, self.opt.group, name)

    async def _nothing_pending(self) -> bool:
        for key in self.streams:
            info = await self.redis.xpending(key, self.opt.group)
            if int(info["pending"]):
                return False
        return True

    # --- health ----------------------------------------------------------------------------------

    async def _group_stats(self) -> None:
        pending = lag = 0
        oldest_ms = 0
        for key in self.streams:
            with contextlib.suppress(ResponseError):
                for g in await self.redis.xinfo_groups(key):
                    if as_str(g["name"]) == self.opt.group:
                        pending += int(g.get("pending") or 0)
                        lag += int(g.get("lag") or 0)
                if pending:
                    rows: Any = await self.redis.xpending_range(
                        key, self.opt.group, min="-", max="+", count=1
                    )
                    if rows:
                        oldest_ms = max(oldest_ms, int(rows[0]["time_since_delivered"]))
        self.pending, self.lag, self.pending_age_s = pending, lag, oldest_ms / 1000

    async def _heartbeat_loop(self) -> None:
        proc = ProcessStats()
        meter = RateMeter()
        interval = self.settings.health_interval_s
        while not self._stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self._group_stats()
                values: dict[str, Any] = {
                    "role": "consumer",
                    "group": self.opt.group,
                    "name": self.opt.name,
                    "status": self.status,
                    "handler": str(
                        self.opt.handler if isinstance(self.opt.handler, str) else "custom"
                    ),
                    "markets": ",".join(self.streams.values()),
                    "processed": self.processed,
                    "processed_per_s": round(meter.rate(self.processed), 1),
                    "errors": self.errors,
                    "dead_lettered": self.dead_lettered,
                    "reclaimed": self.reclaimed,
                    "pending": self.pending,
                    "lag": self.lag,
                    "updated_ms": now_ms(),
                    **proc.sample(),
                }
                level, reasons = consumer_level(
                    {
                        "lag": self.lag,
                        "pending_age_s": self.pending_age_s,
                        "batches": self.batches,
                        "failed_batches": self.errors,
                        "dead_lettered": self.dead_lettered,
                        "cpu_percent": float(values["cpu_percent"]),
                        "rss_mb": float(values["rss_mb"]),
                    },
                    self.settings,
                )
                values.update(level=level, reasons="; ".join(reasons))
                pipe = self.redis.pipeline(transaction=False)
                pipe.hset(self.health_key, mapping=to_fields(values))  # type: ignore[arg-type]
                pipe.expire(self.health_key, ttl_s(interval))
                await pipe.execute()
            await sleep_unless(self._stop, interval)
