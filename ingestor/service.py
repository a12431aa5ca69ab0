"""The ingestor: one feed connection kept alive, subscriptions reconciled from Redis, every tick
XADDed into its market's stream.

Tasks: the connection supervisor (connect, run, back off, reconnect), the reconciler (desired set
in Redis vs what this connection has, paced), the control listener (pub/sub nudges), the publisher
(batched XADD) and the heartbeat writer. ``stop()`` or SIGTERM: stop reading, flush the queue,
DISCONNECT with a receipt, delete the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingestor import reconcile, stomp
from ingestor.aio import finish, sleep_unless
from ingestor.backoff import Backoff
from ingestor.errors import AccessDenied, FeedError, GaveUp
from ingestor.feed import FeedConnection
from ingestor.gaps import OpenGapFile, gap_fields
from ingestor.guard import MemoryGuard
from ingestor.health import ProcessStats, RateMeter, now_ms, to_fields, ttl_s
from ingestor.keys import Keys
from ingestor.levels import ingestor_level
from ingestor.publisher import Publisher
from ingestor.redisconn import async_client
from ingestor.resp import pack_pairs
from ingestor.settings import Settings
from ingestor.sources.toss_web import TossWebSource
from ingestor.spool import Spool
from ingestor.subs import Sub

log = logging.getLogger("toss.ingestor")

PENDING, ACTIVE, FAILED, INVALID = "pending", "active", "failed", "invalid"
EXIT_MEMORY = 3  # over TOSS_RSS_HARD_MB: flushed, gap recorded; the supervisor should restart us


@dataclass(slots=True)
class Failure:
    """A subscription the server refused: retried with backoff while it stays desired."""

    reason: str
    retry_at: float  # monotonic seconds
    attempts: int = 1


@dataclass(slots=True)
class Route:
    """Where the ticks of one subscription id go, and how they are written there."""

    sub: Sub
    stream: str
    receipt: str
    member: str = field(init=False)
    active: bool = False  # a tick or the receipt has arrived
    _pairs_head: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.member = self.sub.member
        self._pairs_head = pack_pairs({"channel": self.sub.channel, "code": self.sub.code})

    def tick(self, dt: str, recv_ms: int, body: bytes) -> tuple[dict[str, Any], bytes]:
        """A tick entry's fields, and the same fields as RESP (``pack_pairs``) built from the
        route's constant part with one format: the ingest hot path's XADD encoding."""
        fields = {
            "channel": self.sub.channel,
            "code": self.sub.code,
            "dt": dt,
            "recv_ms": recv_ms,
            "payload": body,
        }
        d = dt.encode()
        ms = b"%d" % recv_ms
        pairs = _TICK_PAIRS % (self._pairs_head, len(d), d, len(ms), ms, len(body), body)
        return fields, pairs


_TICK_PAIRS = (  # channel and code (from the route), then dt, recv_ms, payload
    b"%s$2\r\ndt\r\n$%d\r\n%s\r\n$7\r\nrecv_ms\r\n$%d\r\n%s\r\n$7\r\npayload\r\n$%d\r\n%s\r\n"
)


@dataclass(slots=True)
class SubState:
    state: str
    since_ms: int
    error: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"state": self.state, "since_ms": self.since_ms, "error": self.error})


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        redis: Redis | None = None,
        source: TossWebSource | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._maxlen = settings.stream_maxlen  # read once per tick
        self.redis = redis or async_client(settings)
        self.source = source or TossWebSource(settings)
        spool = (
            Spool(settings.spool_dir / settings.instance_name, settings.spool_max_mb << 20)
            if settings.spool_max_mb
            else None
        )
        self.publisher = Publisher(
            self.redis,
            settings.max_message_queue_size,
            settings.publish_batch_max,
            spool,
            self._spool_gap,
        )
        self.health_key = self.keys.health_ingestor(settings.instance_name)
        # subscription state
        self.desired: dict[str, Sub] = {}
        self.states: dict[str, SubState] = {}
        self._dirty_states: set[str] = set()
        self.failed: dict[str, Failure] = {}  # refused by the server, retried with backoff
        self.recoveries: Counter[str] = Counter()
        self.memory = MemoryGuard(settings.rss_soft_mb, settings.rss_hard_mb)
        self.exit_code = 0
        self._reconnect_times: deque[float] = deque(maxlen=1000)
        self._down_since = time.monotonic()
        self._open_gap_file = OpenGapFile(settings.spool_dir / settings.instance_name)
        self.routes: dict[str, Route] = {}  # subscription id -> route (current connection)
        self.member_ids: dict[str, str] = {}  # member -> subscription id (current connection)
        # connection
        self.conn: FeedConnection | None = None
        self.status = "starting"
        self.status_reason = ""
        self.connected_since_ms = 0
        self.reconnects = 0
        self.disconnect_reasons: deque[str] = deque(maxlen=20)
        self._gap: tuple[int, str, set[str]] | None = None  # (from_ms, reason, markets)
        # counters
        self.ticks_total = 0
        self.invalid_total = 0
        self.invalid_by_reason: dict[str, int] = {}
        self.gaps_total = 0
        self.last_tick_ms = 0
        self._stop = asyncio.Event()
        self._nudge = asyncio.Event()
        self.exit_reason = ""
        self._task: asyncio.Task[int] | None = None

    # --- public ----------------------------------------------------------------------------------

    def _spool_gap(self, key: str, from_ms: int, to_ms: int, reason: str) -> dict[str, Any] | None:
        return gap_fields(from_ms, to_ms, reason) if self.keys.is_ticks(key) else None

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()  # wake the reconciler so it sees the stop at once

    async def __aenter__(self) -> Ingestor:
        """``async with Ingestor(settings) as ing``: runs in the background until the block ends."""
        self._task = asyncio.create_task(self.run(), name="ingestor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        assert self._task is not None
        code = await self._task
        await self.redis.aclose()
        if code:
            raise GaveUp(self.exit_reason)

    def nudge(self) -> None:
        self._nudge.set()

    async def add_symbols(self, subs: list[Sub]) -> None:
        if subs:
            await self.redis.sadd(self.keys.subs, *[s.member for s in subs])

    async def run(self) -> int:
        """Run until ``stop()``; returns the process exit code (0 clean, 1 gave up)."""
        s = self.settings
        log.info(
            "ingestor %s: feed %s, Redis %s, prefix %r",
            s.instance_name,
            s.websocket_url,
            s.redis_url_masked,
            s.key_prefix,
        )
        await self.redis.ping()
        await self.publisher.open()
        if self.settings.spool_max_mb:
            # a previous run stopped while subscribed: its window closes when we are subscribed
            self._gap = await self._open_gap_file.load()
        tasks = [
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._control_loop(), name="control"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]
        supervisor = asyncio.create_task(self._supervise(), name="supervisor")
        stopper = asyncio.create_task(self._stop.wait())
        code = 0
        try:
            await asyncio.wait({supervisor, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if supervisor.done() and supervisor.exception() is not None:
                exc = supervisor.exception()
                if isinstance(exc, GaveUp):
                    self.exit_reason = str(exc)
                    code = 1
                else:
                    raise exc  # type: ignore[misc]
        finally:
            self.status = "stopped"
            await self._shutdown(supervisor, stopper, tasks)
        return code or self.exit_code

    # --- connection supervisor -------------------------------------------------------------------

    async def _supervise(self) -> None:
        s = self.settings
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        failures = 0
        while not self._stop.is_set():
            # status_reason keeps the last failure while we retry: the health key then says why
            # the ingestor is still connecting; it is cleared once connected.
            self.status = "connecting"
            conn = FeedConnection(self.source, s, self)
            started = time.monotonic()
            try:
                await conn.open()
            except FeedError as exc:
                failures += 1
                denied = isinstance(exc, AccessDenied)
                delay = backoff.to_cap() if denied else backoff.next()
                self._set_down(str(exc))
                if s.max_reconnect_attempts and failures >= s.max_reconnect_attempts:
                    raise GaveUp(
                        f"gave up after {failures} failed connection attempts: {exc}"
                    ) from None
                log.warning(
                    "%s; retrying in %.1f s%s",
                    exc,
                    delay,
                    " (access denied: backing off to the cap)" if denied else "",
                )
                self.status = "backing-off"
                await sleep_unless(self._stop, delay)
                continue
            failures = 0
            self._on_connected(conn)
            try:
                await conn.run()
            except FeedError as exc:
                reason = str(exc)
            finally:
                self._on_disconnected()
            if self._stop.is_set():
                return
            self.reconnects += 1
            self._reconnect_times.append(time.monotonic())
            self.recoveries["reconnect"] += 1
            self.disconnect_reasons.append(reason)
            self._set_down(reason)
            if time.monotonic() - started >= s.healthy_session_s:
                backoff.reset()
            delay = backoff.next()
            log.warning("feed connection lost: %s; reconnecting in %.1f s", reason, delay)
            self.status = "backing-off"
            await sleep_unless(self._stop, delay)

    def _set_down(self, reason: str) -> None:
        self.status_reason = reason

    def _on_connected(self, conn: FeedConnection) -> None:
        self.conn = conn
        self.routes.clear()
        self.member_ids.clear()
        self.status = "connected"
        self.status_reason = ""
        self.connected_since_ms = now_ms()
        self.nudge()

    def _on_disconnected(self) -> None:
        conn_had = {r.sub.market for r in self.routes.values()}
        if self.conn is not None and conn_had and self._gap is None and not self._stop.is_set():
            self._gap = (now_ms(), self.status_reason or "connection lost", conn_had)
        self.conn = None
        self._down_since = time.monotonic()
        for route in self.routes.values():
            if self.states.get(route.sub.member, SubState(PENDING, 0)).state == ACTIVE:
                self._set_state(route.sub.member, PENDING, "reconnecting")
        self.routes.clear()
        self.member_ids.clear()
        self.connected_since_ms = 0

    # --- frames from the connection (FrameHandler) ------------------------------------------------

    def on_message(self, frame: stomp.Frame, recv_ms: int) -> None:
        sub_id = frame.get("subscription")
        route = self.routes.get(sub_id or "")
        if route is None:
            self.on_invalid("unknown_subscription", f"subscription {sub_id!r}", frame.body[:200])
            return
        body = frame.body
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.on_invalid("not_json", f"{route.member}: body is not JSON", body[:200])
            return
        fields, pairs = route.tick(self.source.event_time(payload), recv_ms, body)
        self.publisher.put_nowait(route.stream, fields, self._maxlen, pairs)
        self.ticks_total += 1
        self.last_tick_ms = recv_ms
        if not route.active:
            route.active = True
            st = self.states.get(route.member)
            if st is not None and st.state == PENDING:
                self._set_state(route.member, ACTIVE)

    def on_receipt(self, receipt_id: str) -> None:
        for route in self.routes.values():
            if route.receipt == receipt_id:
                self._set_state(route.sub.member, ACTIVE)
                return

    def on_error(self, frame: stomp.Frame) -> None:
        """An ERROR that names one of our SUBSCRIBE receipts fails that member (retried later);
        the server closes after any ERROR, and every other subscription is restored."""
        rid = frame.get("receipt-id")
        msg = frame.get("message") or frame.body.decode("utf-8", "replace")[:200]
        for sub_id, route in list(self.routes.items()):
            if rid and route.receipt == rid:
                member = route.sub.member
                prev = self.failed.get(member)
                attempts = prev.attempts + 1 if prev else 1
                s = self.settings
                delay = min(s.failed_retry_max_s, s.failed_retry_initial_s * 2 ** (attempts - 1))
                log.warning("server refused %s: %s (retry in %.0f s)", member, msg, delay)
                self.failed[member] = Failure(msg, time.monotonic() + delay, attempts)
                self._set_state(member, FAILED, msg)
                del self.routes[sub_id]
                self.member_ids.pop(member, None)
                return

    def on_invalid(self, reason: str, detail: str, sample: bytes) -> None:
        self.invalid_total += 1
        self.invalid_by_reason[reason] = self.invalid_by_reason.get(reason, 0) + 1
        if self.invalid_total <= 10 or self.invalid_total % 1000 == 0:
            log.warning("unusable frame (%s): %s [%d so far]", reason, detail, self.invalid_total)
        self.publisher.put_nowait(
            self.keys.invalid,
            {
                "reason": reason,
                "detail": detail,
                "recv_ms": now_ms(),
                "sample": sample.decode("utf-8", "backslashreplace"),
            },
            self.settings.invalid_maxlen,
        )

    @property
    def congested(self) -> bool:
        return self.publisher.full

    async def drain(self) -> None:
        """Called by the reader after each WebSocket message: wait while the queue is full."""
        if self.publisher.full:
            await self.publisher.wait_for_room()

    # --- reconciling ------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        backoff = Backoff(0.2, 5.0)
        failing = False
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.settings.reconcile_interval_s)
            self._nudge.clear()
            try:
                await self.reconcile_once()
                backoff.reset()
                if failing:
                    log.info("reconcile: desired subscriptions readable again")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("reconcile: cannot read desired subscriptions: %s", exc)
                failing = True
                await sleep_unless(self._stop, backoff.next())
            except FeedError:
                pass  # the supervisor sees the connection end and reconnects

    async def reconcile_once(self) -> None:
        s = self.settings
        members = {
            m.decode() if isinstance(m, bytes) else m
            for m in await self.redis.smembers(self.keys.subs)
        }
        # a member removed from the desired set forgets its failure
        for m in list(self.failed):
            if m not in members:
                del self.failed[m]
        conn = self.conn
        active = set(self.member_ids) if conn is not None else set()
        now = time.monotonic()
        waiting = {m: f for m, f in self.failed.items() if f.retry_at > now}
        p = reconcile.plan(
            members, active, s.subscription_budget, self.source.parse_member, waiting
        )
        self.desired = p.desired
        for member, reason in p.invalid.items():
            self._set_state(member, INVALID, reason)
        for member in p.over_budget:
            self._set_state(
                member, FAILED, f"over the per-connection budget of {s.subscription_budget}"
            )
        for member in list(self.states):
            if member not in members:
                del self.states[member]
                self._dirty_states.add(member)
        for member in p.desired:
            if member not in self.states and member not in self.failed:
                self._set_state(member, PENDING, "" if conn else "waiting for the connection")
        await self._flush_states()
        if conn is None:
            return
        for member in p.unsubscribe:
            sub_id = self.member_ids.pop(member, None)
            if sub_id is not None:
                self.routes.pop(sub_id, None)
                await conn.send(stomp.Frame("UNSUBSCRIBE", [("id", sub_id)]))
        batch = s.subscribe_batch_size
        for i in range(0, len(p.subscribe), batch):
            if i:
                await asyncio.sleep(s.subscribe_batch_interval_ms / 1000)
                if self.conn is not conn:
                    return
            for sub in p.subscribe[i : i + batch]:
                if sub.member in self.member_ids or sub.member in waiting:
                    continue
                failure = self.failed.get(sub.member)
                if failure is not None:
                    self.recoveries["subscription_retry"] += 1
                    log.info(
                        "retrying refused subscription %s (attempt %d; it failed with: %s)",
                        sub.member,
                        failure.attempts + 1,
                        failure.reason,
                    )
                sub_id = conn.next_id()
                receipt = f"sub-{sub_id}"
                self.routes[sub_id] = Route(sub, self.keys.ticks(sub.market), receipt)
                self.member_ids[sub.member] = sub_id
                self._set_state(sub.member, PENDING)
                await conn.send(
                    stomp.Frame(
                        "SUBSCRIBE",
                        [
                            ("id", sub_id),
                            ("destination", self.source.destination(sub)),
                            ("receipt", receipt),
                        ],
                    )
                )
            await self._flush_states()
        conn.has_subscriptions = bool(self.routes)
        if self._close_gap() and self.settings.spool_max_mb:
            await self._open_gap_file.remove()
        await self._flush_states()

    def _close_gap(self) -> bool:
        if self._gap is None:
            return False
        from_ms, reason, markets = self._gap
        self._gap = None
        to_ms = now_ms()
        for market in sorted(markets):
            self.publisher.put_nowait(
                self.keys.ticks(market),
                gap_fields(from_ms, to_ms, reason),
                self.settings.stream_maxlen,
            )
            self.gaps_total += 1
        return True

    def _set_state(self, member: str, state: str, error: str = "") -> None:
        if state == ACTIVE:
            self.failed.pop(member, None)
        cur = self.states.get(member)
        if cur is not None and cur.state == state and cur.error == error:
            return
        self.states[member] = SubState(state, now_ms(), error)
        self._dirty_states.add(member)

    async def _flush_states(self) -> None:
        if not self._dirty_states:
            return
        dirty, self._dirty_states = self._dirty_states, set()
        present = {m: self.states[m].encode() for m in dirty if m in self.states}
        gone = [m for m in dirty if m not in self.states]
        try:
            pipe = self.redis.pipeline(transaction=False)
            if present:
                pipe.hset(self.keys.subs_state, mapping=present)  # type: ignore[arg-type]
            if gone:
                pipe.hdel(self.keys.subs_state, *gone)
            await pipe.execute()
        except (RedisError, OSError):
            self._dirty_states |= dirty
            raise

    # --- control channel --------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.control)
                backoff.reset()
                while not self._stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self.nudge()
            except (RedisError, OSError) as exc:
                log.debug("control channel: %s", exc)
                await sleep_unless(self._stop, backoff.next())
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- health -----------------------------------------------------------------------------------

    def health_fields(self, proc: ProcessStats, rate: float) -> dict[str, str]:
        states = [st.state for st in self.states.values()]
        values: dict[str, Any] = {
            "role": "ingestor",
            "name": self.settings.instance_name,
            "status": self.status,
            "status_reason": self.status_reason,
            "source": self.source.name,
            "connected_since_ms": self.connected_since_ms,
            "reconnects": self.reconnects,
            "desired": len(self.desired),
            "active": states.count(ACTIVE),
            "pending": states.count(PENDING),
            "failed": states.count(FAILED),
            "invalid_members": states.count(INVALID),
            "ticks_total": self.ticks_total,
            "ticks_per_s": round(rate, 1),
            "invalid_total": self.invalid_total,
            "invalid_by_reason": orjson.dumps(self.invalid_by_reason).decode(),
            "gaps_total": self.gaps_total,
            "last_tick_age_s": round((now_ms() - self.last_tick_ms) / 1000, 1)
            if self.last_tick_ms
            else -1,
            "queue_depth": self.publisher.depth,
            "spool_bytes": self.publisher.spool_bytes,
            "spooled_total": self.publisher.spooled_total,
            "spool_dropped_total": self.publisher.dropped_total,
            "duplicates_skipped": self.publisher.duplicates_skipped,
            "redis_ok": int(self.publisher.redis_ok),
            "written_total": self.publisher.written,
            "recoveries": orjson.dumps(dict(self.recoveries)).decode(),
            "updated_ms": now_ms(),
        }
        values.update(proc.sample())
        hour_ago = time.monotonic() - 3600
        level, reasons = ingestor_level(
            {
                "connected": self.status == "connected",
                "down_s": 0 if self.conn else time.monotonic() - self._down_since,
                "reconnects_last_hour": sum(1 for t in self._reconnect_times if t > hour_ago),
                "desired": len(self.desired),
                "failed": values["failed"],
                "frames_total": self.ticks_total + self.invalid_total,
                "invalid_total": self.invalid_total,
                "queue_depth": self.publisher.depth,
                "spool_bytes": self.publisher.spool_bytes,
                "active": values["active"],
                "last_tick_age_s": values["last_tick_age_s"],
                "cpu_percent": float(values["cpu_percent"]),
                "rss_mb": float(values["rss_mb"]),
            },
            self.settings,
        )
        values["level"] = level
        values["reasons"] = "; ".join(reasons)
        return to_fields(values)

    def _guard_memory(self, rss_mb: float) -> None:
        verdict = self.memory.check(rss_mb)
        if verdict == "hard":
            self.recoveries["memory_hard_limit"] += 1
            self.exit_code = EXIT_MEMORY
            self.exit_reason = (
                f"RSS {rss_mb:.0f} MB over the hard limit of {self.memory.hard_mb} MB: queue "
                f"flushed, gap recorded, exiting {EXIT_MEMORY} for the supervisor to restart"
            )
            log.error("%s", self.exit_reason)
            self.stop()
        elif verdict == "soft":
            self.recoveries["memory_soft_limit"] += 1
            freed = gc.collect()
            log.warning(
                "RSS %.0f MB over the soft limit of %d MB: collected %d objects",
                rss_mb,
                self.memory.soft_mb,
                freed,
            )

    async def _heartbeat_loop(self) -> None:
        proc = ProcessStats()
        meter = RateMeter()
        interval = self.settings.health_interval_s
        while not self._stop.is_set():
            fields = self.health_fields(proc, meter.rate(self.ticks_total))
            self._guard_memory(float(fields["rss_mb"]))
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.hset(self.health_key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(self.health_key, ttl_s(interval))
                await pipe.execute()
                await self._flush_states()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat not written: %s", exc)
            await sleep_unless(self._stop, interval)

    # --- shutdown ---------------------------------------------------------------------------------

    async def _shutdown(
        self,
        supervisor: asyncio.Task[None],
        stopper: asyncio.Task[Any],
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self._stop.set()
        conn = self.conn
        routed = {r.sub.market for r in self.routes.values()}
        if conn is not None:
            await conn.disconnect(1.0)
        await finish([supervisor, stopper], 2.0)
        if self.settings.spool_max_mb:
            why = "memory hard limit: restarting" if self.exit_code else "ingestor stopped"
            gap = (now_ms(), why, routed) if self._gap is None else self._gap
            if self._gap is not None:
                gap = (gap[0], gap[1], gap[2] | routed)
            if gap[2]:
                with contextlib.suppress(OSError):
                    await self._open_gap_file.save(gap)
                self._gap = None
        if self._gap is not None:
            self._close_gap()
        await self.publisher.flush(10.0)
        self.publisher.stop()
        await finish(tasks, 5.0)
        lost = await self.publisher.persist_rest()
        await self.publisher.aclose()
        if lost:
            log.error("shutdown: %d entries could not be written to Redis (no spool)", lost)
        with contextlib.suppress(RedisError, OSError):
            await self._flush_states()
            await self.redis.delete(self.health_key)
        log.info("ingestor stopped: %d ticks written", self.publisher.written)
