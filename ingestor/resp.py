"""The ingest hot path's own Redis connection: XADD batches encoded straight to RESP bytes and
replies read with hiredis, without redis-py's per-command objects (which cost more than the feed
itself at 10^5 ticks/s; see the README's benchmarks).

Only plain TCP (``redis://``); TLS and unix sockets use redis-py's pipeline instead. Connection
details (host, port, db, user, password, timeouts) come from the redis-py client built from the
settings, so there is still one place that reads ``TOSS_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
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


class _RespProtocol(asyncio.Protocol):
    """Replies parsed (hiredis) as the bytes arrive, straight from ``data_received``: no stream
    buffer to copy through. The caller waits until the count it expects is in."""

    def __init__(self) -> None:
        self.parser = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.replies: list[Any] = []
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self.failure: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser, replies = self.parser, self.replies
        parser.feed(data)
        try:
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"Redis sent something that is not RESP: {exc}"))
            return
        if len(replies) >= self.want:
            self._wake(self.waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionError(f"Connection closed by server{reason}."))

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake(self.writable)
        self.writable = None

    def _fail(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = exc
        for fut in (self.waiter, self.writable):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    @staticmethod
    def _wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)


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
            for reply in await self._roundtrip(b"".join(setup), len(setup)):
                if isinstance(reply, ResponseError):
                    await self.close()
                    raise reply

    async def execute(self, packed: Iterable[bytes], n: int) -> list[Any]:
        """Send ``n`` packed commands in one write; return their ``n`` replies in order."""
        if self._proto is None:
            await self._connect()
        try:
            return await self._roundtrip(b"".join(packed), n)
        except BaseException:
            await self.close()  # replies may be in flight: never reuse this socket
            raise

    async def _roundtrip(self, data: bytes, n: int) -> list[Any]:
        """One at a time per connection (each user of a RespConnection is a single task)."""
        p = self._proto
        assert p is not None and p.transport is not None
        if p.failure is not None:
            raise p.failure
        p.replies, p.want = [], n
        p.transport.write(data)
        try:
            async with asyncio.timeout(self.timeout_s):
                if p.writable is not None:
                    await p.writable
                if len(p.replies) < n:
                    p.waiter = asyncio.get_running_loop().create_future()
                    await p.waiter
        except TimeoutError:
            raise ConnectionError(f"Redis did not answer within {self.timeout_s:g} s") from None
        finally:
            p.waiter = None
        replies, p.replies = p.replies, []
        return replies

    async def close(self) -> None:
        p, self._proto = self._proto, None
        if p is not None and p.transport is not None:
            p.transport.close()
