"""The ingest hot path's own Redis connection: XADD batches encoded straight to RESP bytes and
replies read with hiredis, without redis-py's per-command objects (which cost more than the feed
itself at 10^5 ticks/s; see the README's benchmarks).

Only plain TCP (``redis://``); TLS and unix sockets use redis-py's pipeline instead. Connection
details (host, port, db, user, password, timeouts) come from the redis-py client built from the
settings, so there is still one place that reads ``TOSS_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    parts.extend(_bulk(_b(a)) for a in args)
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
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(replyError=ResponseError)

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
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}") from None
        self._parser = hiredis.Reader(replyError=ResponseError)
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
        if self._writer is None:
            await self._connect()
        try:
            return await self._roundtrip(b"".join(packed), n)
        except BaseException:
            await self.close()  # replies may be in flight: never reuse this socket
            raise

    async def _roundtrip(self, data: bytes, n: int) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        replies: list[Any] = []
        parser = self._parser
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._writer.drain()
                while len(replies) < n:
                    reply = parser.gets()
                    if reply is False:
                        chunk = await self._reader.read(1 << 16)
                        if not chunk:
                            raise ConnectionError("Connection closed by server.")
                        parser.feed(chunk)
                        continue
                    replies.append(reply)
        except TimeoutError:
            raise ConnectionError(f"Redis did not answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"Redis connection failed: {exc}") from None
        return replies

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
