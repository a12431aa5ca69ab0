"""The ingest hot path's own Redis connection: XADD batches encoded straight to RESP bytes and
replies read with hiredis, without redis-py's per-command objects (which cost more than the feed
itself at 10^5 ticks/s; see the README's benchmarks).

Only plain TCP (``redis://``); TLS and unix sockets use redis-py's pipeline instead. Connection
details (host, port, db, user, password, timeouts) come from the redis-py client built from the
settings, so there is still one place that reads ``TOSS_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

_CRLF = b"\r\n"


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _b(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return str(v).encode()


_ENCODED: dict[Any, bytes] = {}  # field names, keys and short repeated values -> RESP bulk


def _bulk_cached(v: Any) -> bytes:
    """RESP bulk string for values that repeat (field names, stream keys, codes, channels)."""
    got = _ENCODED.get(v)
    if got is None:
        got = _bulk(_b(v))
        if len(_ENCODED) > 50_000:
            _ENCODED.clear()
        _ENCODED[v] = got
    return got


def pack_command(*args: Any) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for a in args:  # inline: XACK carries a thousand ids per batch
        v = a if a.__class__ is bytes else _b(a)
        append(b"$%d\r\n%s\r\n" % (len(v), v))
    return b"".join(parts)


def pack_pairs(fields: Mapping[Any, Any]) -> bytes:
    """The field/value pairs of an XADD as RESP bulk strings. Field names, stream keys and short
    repeated values (codes, channels) come from a cache."""
    parts: list[bytes] = []
    append = parts.append
    cache = _ENCODED
    for k, v in fields.items():
        kb = cache.get(k)
        append(kb if kb is not None else _bulk_cached(k))
        cls = v.__class__
        if cls is bytes:
            append(b"$%d\r\n%s\r\n" % (len(v), v))
        elif cls is str:
            vb = cache.get(v)
            if vb is None:
                vb = _bulk_cached(v) if len(v) <= 16 else _bulk(v.encode())
            append(vb)
        elif cls is int:
            d = b"%d" % v
            append(b"$%d\r\n%s\r\n" % (len(d), d))
        else:
            append(_bulk(_b(v)))
    return b"".join(parts)


def pack_xadd(
    key: str, entry_id: str, maxlen: int, fields: Mapping[Any, Any], pairs: bytes | None = None
) -> bytes:
    """``XADD key [MAXLEN ~ n] id field value ...`` as RESP; ``pairs`` is ``pack_pairs(fields)``
    when the caller already has it (the ingest hot path builds it from a per-route template)."""
    head = _HEADS.get((key, maxlen, len(fields)))
    if head is None:
        n = 3 + 2 * len(fields) + (3 if maxlen else 0)
        head = b"*%d\r\n$4\r\nXADD\r\n" % n + _bulk(key.encode())
        if maxlen:
            m = b"%d" % maxlen
            head += b"$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n" % (len(m), m)
        _HEADS[(key, maxlen, len(fields))] = head
    eid = entry_id.encode()
    return b"%s$%d\r\n%s\r\n%s" % (
        head,
        len(eid),
        eid,
        pack_pairs(fields) if pairs is None else pairs,
    )


_HEADS: dict[tuple[str, int, int], bytes] = {}


class _Expected:
    """The replies one ``send`` waits for."""

    __slots__ = ("fut", "got", "n", "on_start")

    def __init__(self, n: int, fut: asyncio.Future[list[Any]], on_start: Callable[[], None] | None):
        self.n = n
        self.got: list[Any] = []
        self.fut = fut
        self.on_start = on_start


class _RespProtocol(asyncio.Protocol):
    """Replies parsed (hiredis) as the bytes arrive, straight from ``data_received``: no stream
    buffer to copy through. Sends are answered in order; each gets the next ``n`` replies."""

    def __init__(self) -> None:
        self.parser = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.expected: deque[_Expected] = deque()
        self.writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self.failure: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser, expected = self.parser, self.expected
        if expected:
            _started(expected[0])  # its reply is arriving: Redis is done with that command
        parser.feed(data)
        try:
            while expected:
                head = expected[0]
                while len(head.got) < head.n:
                    reply = parser.gets()
                    if reply is False:
                        return
                    head.got.append(reply)
                expected.popleft()
                _started(head)
                if not head.fut.done():
                    head.fut.set_result(head.got)
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"Redis sent something that is not RESP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self.fail(ConnectionError(f"Connection closed by server{reason}."))

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def fail(self, exc: Exception) -> None:
        """Every reply still expected fails with ``exc``; the socket is dropped."""
        if self.failure is None:
            self.failure = exc
        waiting = [e.fut for e in self.expected]
        self.expected.clear()
        for fut in [*waiting, self.writable]:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # a sender that drops it unawaited is not warned about it
        if self.transport is not None:
            self.transport.abort()


def _started(e: _Expected) -> None:
    if e.on_start is not None:
        callback, e.on_start = e.on_start, None
        callback()


class RespConnection:
    """One TCP connection, pipelined commands, replies as values or ``ResponseError`` objects."""

    def __init__(self, redis: Redis) -> None:
        kw = redis.connection_pool.connection_kwargs
        self.host: str = kw.get("host", "127.0.0.1")
        self.port: int = int(kw.get("port", 6379))
        self.db: int = int(kw.get("db", 0) or 0)
        self.username: str | None = kw.get("username")
        self.password: str | None = kw.get("password")
        self.timeout_s: float = float(kw.get("socket_timeout") or 5.0)
        self._proto: _RespProtocol | None = None

    @staticmethod
    def usable_for(redis: Redis) -> bool:
        kw = redis.connection_pool.connection_kwargs
        return (
            "host" in kw
            and "path" not in kw
            and not kw.get("ssl")
            and (redis.connection_pool.connection_class.__name__ == "Connection")
        )

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, self._proto = await asyncio.wait_for(
                loop.create_connection(_RespProtocol, self.host, self.port), self.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}") from None
        setup: list[bytes] = []
        if self.password is not None:
            auth = [self.username, self.password] if self.username else [self.password]
            setup.append(pack_command("AUTH", *auth))
        if self.db:
            setup.append(pack_command("SELECT", self.db))
        if setup:
            for reply in await self.replies(self.send_nowait(setup, len(setup))):
                if isinstance(reply, ResponseError):
                    await self.close()
                    raise reply

    async def execute(self, packed: Iterable[bytes], n: int) -> list[Any]:
        """Send ``n`` packed commands in one write; return their ``n`` replies in order."""
        await self.connect()
        fut = self.send_nowait(packed, n)
        p = self._proto
        if p is not None and p.writable is not None:
            await self.replies(p.writable)  # the socket's buffer is full: wait until it drains
        replies: list[Any] = await self.replies(fut)
        return replies

    async def connect(self) -> None:
        """Connect, or reconnect when the socket was dropped (Redis restarted, say) since the
        last command: a failed connection is replaced, never reused."""
        if self._proto is not None and self._proto.failure is not None:
            self._proto = None
        if self._proto is None:
            await self._connect()

    def send_nowait(
        self, packed: Iterable[bytes], n: int, on_start: Callable[[], None] | None = None
    ) -> asyncio.Future[list[Any]]:
        """Write ``n`` packed commands now (after ``connect``); the future gets their replies.
        Several sends can be in flight: Redis answers in order. ``on_start`` is called (inside
        the protocol) as soon as the reply begins to arrive, when Redis has finished the work:
        the moment to send the next request so that Redis works while this reply is parsed."""
        p = self._proto
        if p is None or p.transport is None:
            raise ConnectionError("not connected")
        if p.failure is not None:
            raise p.failure
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        p.expected.append(_Expected(n, fut, on_start))
        p.transport.write(b"".join(packed))
        return fut

    async def replies(self, fut: asyncio.Future[Any]) -> Any:
        """What a ``send_nowait`` brings, within the socket timeout. Any failure (timeout, lost
        connection, cancellation) closes the connection and fails every send still in flight: a
        socket with replies in flight is never reused."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"Redis did not answer within {self.timeout_s:g} s") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        p, self._proto = self._proto, None
        if p is not None:
            p.fail(ConnectionError("connection closed"))
