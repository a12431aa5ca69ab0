"""Both write paths (lean RESP and redis-py pipeline) produce the same entries; replies and
errors come back in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ConnectionError

from ingestor.publisher import Publisher
from ingestor.resp import RespConnection, pack_command, pack_pairs, pack_xadd
from ingestor.service import Route
from ingestor.subs import Sub
from tests.conftest import until


def test_pack_xadd_is_resp() -> None:
    got = pack_xadd("k", "1-0", 100, {"a": b"x\r\ny", "n": 5})
    assert got == (
        b"*10\r\n$4\r\nXADD\r\n$1\r\nk\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$3\r\n100\r\n$3\r\n1-0\r\n"
        b"$1\r\na\r\n$4\r\nx\r\ny\r\n$1\r\nn\r\n$1\r\n5\r\n"
    )
    assert pack_command("PING") == b"*1\r\n$4\r\nPING\r\n"


@pytest.mark.parametrize(
    ("dt", "body"),
    [
        ("2026-11-26T09:00:00.000+09:00", b'{"close":70000}'),
        ("", b"{}"),
        ("09:00 \uc7a5\uc911", '{"name":"\uc0bc\uc131\uc804\uc790","x":"\r\n"}'.encode() * 300),
    ],
)
def test_route_template_equals_the_general_encoding(dt: str, body: bytes) -> None:
    """The hot path's per-route template and the general encoder write the same entry."""
    route = Route(Sub("kr", "trade", "A005930"), "toss:ticks:kr", "sub-1")
    fields, pairs = route.tick(dt, 1764115200123, body)
    assert pairs == pack_pairs(fields)
    assert list(fields) == ["channel", "code", "dt", "recv_ms", "payload"]
    assert pack_xadd("s", "1-0", 0, fields, pairs) == pack_xadd("s", "1-0", 0, fields)


@pytest.mark.parametrize("fast", [True, False])
async def test_write_paths_agree(r: aredis.Redis, prefix: str, fast: bool) -> None:
    pub = Publisher(r, max_queue=100, batch_max=7, fast=fast)
    assert (pub._resp is not None) == fast

    writer = asyncio.create_task(pub.run())
    payload = '{"code":"A005930","close":70000,"name":"삼성전자"}'.encode()
    for i in range(30):
        pub.put_nowait(f"{prefix}:ticks:kr", {"channel": "trade", "n": i, "payload": payload}, 1000)
    assert await pub.flush(5)
    writer.cancel()
    await pub.aclose()
    entries = await r.xrange(f"{prefix}:ticks:kr")
    assert [int(f[b"n"]) for _, f in entries] == list(range(30))
    assert all(f[b"payload"] == payload for _, f in entries)
    ids = [i.decode() for i, _ in entries]
    assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))


@pytest.mark.parametrize("fast", [True, False])
async def test_batch_retried_after_a_lost_reply_is_not_written_twice(
    r: aredis.Redis, prefix: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write lands but its reply is lost: the retry sends the same ids, Redis refuses them
    as already there, and each entry is in the stream once."""
    pub = Publisher(r, max_queue=100, batch_max=100, fast=fast)
    real = pub._xadd_all
    lost = 0

    async def lose_first_reply(todo: list[Any]) -> list[Any]:
        nonlocal lost
        results = await real(todo)
        if not lost:
            lost = len(todo)
            raise ConnectionError("reply lost")
        return results

    monkeypatch.setattr(pub, "_xadd_all", lose_first_reply)
    writer = asyncio.create_task(pub.run())
    key = f"{prefix}:ticks:kr"
    for i in range(20):
        pub.put_nowait(key, {"n": i})
    assert await pub.flush(5)
    writer.cancel()
    await pub.aclose()
    assert lost == 20 and pub.duplicates_skipped == 20 and pub.redis_errors == 1
    assert [int(f[b"n"]) for _, f in await r.xrange(key)] == list(range(20))


async def test_another_writer_with_newer_ids_is_noticed(r: aredis.Redis, prefix: str) -> None:
    """Someone else added an entry with a later id: the refused entry gets a fresh id after the
    stream's last one is read again (not counted as a duplicate, not lost)."""
    pub = Publisher(r, max_queue=100, batch_max=100)
    writer = asyncio.create_task(pub.run())
    key = f"{prefix}:ticks:kr"
    pub.put_nowait(key, {"n": 0})
    assert await pub.flush(5)
    future = f"{pub._ids[key][0] + 60_000}-0"
    await r.xadd(key, {"n": "other"}, id=future)
    pub.put_nowait(key, {"n": 1})
    assert await pub.flush(5)
    writer.cancel()
    await pub.aclose()
    entries = await r.xrange(key)
    assert [f[b"n"] for _, f in entries] == [b"0", b"other", b"1"]
    assert pub.duplicates_skipped == 0 and entries[-1][0].decode() > future


async def test_resp_connection_returns_errors_in_place(redis_url: str, prefix: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    conn = RespConnection(client)
    key = f"{prefix}:x"
    replies = await conn.execute(
        [
            pack_xadd(key, "5-1", 0, {"a": 1}),
            pack_xadd(key, "5-1", 0, {"a": 2}),
            pack_command("XLEN", key),
        ],
        3,
    )
    assert replies[0] == b"5-1"
    assert "equal or smaller" in str(replies[1])
    assert replies[2] == 1
    await conn.close()
    await client.aclose()


@contextlib.asynccontextmanager
async def _fake_redis(
    reply: bytes | None, byte_at_a_time: bool = False, hang_up: bool = False
) -> AsyncIterator[RespConnection]:
    """A lean connection to a TCP server that answers every read with ``reply`` (None: closes
    the connection; ``hang_up``: closes it after the first answer, like a restarting server)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1 << 16):
            if reply is None:
                break
            step = 1 if byte_at_a_time else max(1, len(reply))
            for i in range(0, len(reply), step):
                writer.write(reply[i : i + step])
                await writer.drain()
            if hang_up:
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aredis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
    conn = RespConnection(client)
    try:
        yield conn
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()
        await client.aclose()


@pytest.mark.parametrize(
    ("reply", "said"),
    [(b"not resp\r\n", "not RESP"), (None, "closed"), (b"", "did not answer within 0.5 s")],
)
async def test_resp_connection_failures_are_connection_errors(
    reply: bytes | None, said: str
) -> None:
    async with _fake_redis(reply) as conn:
        with pytest.raises(ConnectionError, match=said):
            await conn.execute([pack_command("PING")], 1)
        # the broken socket is not reused: the next call connects again (and fails the same way)
        with pytest.raises(ConnectionError, match=said):
            await conn.execute([pack_command("PING")], 1)


async def test_resp_connection_replies_in_pieces() -> None:
    async with _fake_redis(b"+PONG\r\n$3\r\nabc\r\n-ERR no\r\n", byte_at_a_time=True) as conn:
        got = await conn.execute([pack_command("PING"), pack_command("GET", "k"), b"x"], 3)
        assert got[:2] == [b"PONG", b"abc"] and "no" in str(got[2])


async def test_on_start_runs_when_the_reply_begins_and_chains_in_order() -> None:
    """``send_nowait(..., on_start=...)``: the callback runs once, when the reply starts to
    arrive; what it sends is answered after, in order."""
    async with _fake_redis(b"+A\r\n", byte_at_a_time=True) as conn:
        await conn.connect()
        calls: list[str] = []
        chained: list[asyncio.Future[list[Any]]] = []

        def next_one() -> None:
            calls.append("start")
            chained.append(conn.send_nowait([pack_command("PING")], 1))

        first = conn.send_nowait([pack_command("PING")], 1, on_start=next_one)
        assert await conn.replies(first) == [b"A"] and calls == ["start"]
        assert await conn.replies(chained[0]) == [b"A"] and calls == ["start"]


async def test_resp_connection_reconnects_after_redis_dropped_it_between_commands() -> None:
    """Redis restarts while the connection is idle: the next command opens a new connection."""
    async with _fake_redis(b"+OK\r\n", hang_up=True) as conn:
        assert await conn.execute([pack_command("PING")], 1) == [b"OK"]
        await until(lambda: conn._proto is not None and conn._proto.failure is not None)
        assert await conn.execute([pack_command("PING")], 1) == [b"OK"]
