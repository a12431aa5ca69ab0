"""The disk spool on its own, the publisher across a Redis outage, and the ingestor across a
Redis outage at 5,000 ticks/s (a private redis-server on another port, killed and restarted)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import redis.asyncio as aredis
from pydantic import SecretStr

from ingestor.keys import Keys
from ingestor.publisher import Publisher
from ingestor.service import Ingestor
from ingestor.settings import Settings
from ingestor.simulator import Scenario, Simulator
from ingestor.spool import Spool, encode
from tests.conftest import PrivateRedis, sim_settings, until


def test_spool_round_trip_positions_and_torn_lines(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1 << 20)
    sp.append(b"".join(encode("k", 0, None, {"n": i, "b": b"x"}) for i in range(5)))
    seg, recs, pos = sp.read(3)
    assert seg is not None and [r.fields["n"] for r in recs] == [0, 1, 2]
    assert recs[0].fields["b"] == "x"
    sp.commit(seg, pos)
    sp2 = Spool(tmp_path, 1 << 20)  # a restart resumes where the last commit left off
    seg, recs, pos = sp2.read(10)
    assert [r.fields["n"] for r in recs] == [3, 4]
    sp2.commit(seg, pos)
    assert sp2.finish_if_drained() and sp2.segments() == []
    sp2.append(encode("k", 0, None, {"n": 9}))
    sp2.append(encode("k", 0, "5-1", {"n": 8}), front=True)
    with sp2.segments()[-1].open("ab") as f:
        f.write(b'["k", 0, null, {"n"')  # torn by a crash
    _, recs, _ = sp2.read(10)
    assert [(r.fields["n"], r.id) for r in recs] == [(8, "5-1")]


async def test_publisher_spools_through_an_outage_and_replays_in_order(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    r = aredis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    pub = Publisher(r, max_queue=50, batch_max=20, spool=Spool(tmp_path / "spool", 1 << 20))
    writer = asyncio.create_task(pub.run())
    for i in range(100):
        pub.put_nowait("t:ticks:kr", {"n": i}, 0)
    assert await pub.flush(5)
    private_redis.kill()
    for i in range(100, 400):
        pub.put_nowait("t:ticks:kr", {"n": i}, 0)
        if pub.full:
            await pub.wait_for_room()
    await until(lambda: pub.spooled_total > 0 and not pub.redis_ok, what="spooling, Redis down")
    private_redis.start()
    assert await pub.flush(20)
    writer.cancel()
    fresh = aredis.Redis.from_url(private_redis.url)  # the old client's socket died with Redis
    got = [int(f[b"n"]) for _, f in await fresh.xrange("t:ticks:kr")]
    await fresh.aclose()
    assert got == list(range(400))
    assert pub.spooled_total > 0 and pub.dropped_total == 0
    assert not list((tmp_path / "spool").glob("*.spool"))
    await r.aclose()


async def test_shutdown_while_redis_is_down_keeps_everything_for_the_next_start(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    r = aredis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    spool_dir = tmp_path / "spool"
    pub = Publisher(r, max_queue=30, batch_max=10, spool=Spool(spool_dir, 1 << 20))
    writer = asyncio.create_task(pub.run())
    for i in range(10):
        pub.put_nowait("t:ticks:us", {"n": i}, 0)
    assert await pub.flush(5)
    private_redis.kill()
    for i in range(10, 100):  # 20 stay in memory, the rest go to the spool
        pub.put_nowait("t:ticks:us", {"n": i}, 0)
    assert not await pub.flush(0.3)
    writer.cancel()
    assert await pub.persist_rest() == 0
    private_redis.start()
    pub2 = Publisher(r, max_queue=30, batch_max=10, spool=Spool(spool_dir, 1 << 20))
    await pub2.open()
    assert pub2.spooling  # a spool on disk is replayed before anything new
    pub2.put_nowait("t:ticks:us", {"n": 100}, 0)
    writer2 = asyncio.create_task(pub2.run())
    assert await pub2.flush(10)
    writer2.cancel()
    fresh = aredis.Redis.from_url(private_redis.url)
    got = [int(f[b"n"]) for _, f in await fresh.xrange("t:ticks:us")]
    await fresh.aclose()
    assert got == list(range(101))
    await r.aclose()


async def test_spool_cap_drops_are_counted_and_marked_by_a_gap(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    from ingestor.gaps import gap_fields

    def gap_for(key: str, a: int, b: int, why: str) -> dict[str, object] | None:
        return gap_fields(a, b, why) if key.startswith("t:ticks:") else None

    r = aredis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    pub = Publisher(
        r, max_queue=5, batch_max=5, spool=Spool(tmp_path / "s", 2000), gap_fields=gap_for
    )
    private_redis.kill()
    writer = asyncio.create_task(pub.run())
    pub.put_nowait("t:ticks:kr", {"channel": "trade", "n": -1}, 0)
    await until(lambda: not pub.redis_ok, what="the writer noticed Redis is down")
    for i in range(200):
        pub.put_nowait("t:ticks:kr", {"channel": "trade", "n": i}, 0)
    assert pub.dropped_total > 0
    private_redis.start()
    await until(lambda: pub.idle, what="drained")
    pub.put_nowait("t:ticks:kr", {"channel": "trade", "n": 999}, 0)  # accepted again: gap first
    assert await pub.flush(10)
    writer.cancel()
    entries = [f for _, f in await r.xrange("t:ticks:kr")]
    gaps = [f for f in entries if f[b"channel"] == b"gap"]
    assert len(gaps) == 1 and f"{pub.dropped_total} ticks lost".encode() in gaps[0][b"reason"]
    assert len(entries) == 1 + 200 - pub.dropped_total + 2
    await r.aclose()


async def test_ingestor_loses_nothing_through_a_redis_outage_at_5000_ticks_per_s(
    private_redis: PrivateRedis, settings: Settings, tmp_path: Path
) -> None:
    # no permessage-deflate: the simulator shares this process and its core with the ingestor,
    # and compressing 5,000 messages a second would starve the replay this test is about
    async with Simulator(
        rate=5000.0, scenario=Scenario(), heartbeat_ms=500, compression=None
    ) as sim:
        await _outage_at_5000(private_redis, settings, sim, tmp_path)


async def _outage_at_5000(
    private_redis: PrivateRedis, settings: Settings, sim: Simulator, tmp_path: Path
) -> None:
    s = sim_settings(
        settings,
        sim,
        redis_url=SecretStr(private_redis.url),
        max_message_queue_size=2000,
        redis_socket_timeout_s=1.0,
        spool_dir=tmp_path / "spool",
    )
    keys = Keys(s.key_prefix)
    members = [
        "kr:trade:A005930",
        "kr:trade:A000660",
        "us:trade:US20100311002",
        "crypto:vwap:VWAP.KRW-BTC",
    ]
    r = aredis.Redis.from_url(private_redis.url)
    await r.sadd(keys.subs, *members)
    ing = Ingestor(s)
    task = asyncio.create_task(ing.run())
    await until(lambda: ing.publisher.written > 2000, what="ticks flowing")
    private_redis.kill()
    sent_at_kill = sim.stats.total_sent
    await until(
        lambda: sim.stats.total_sent > sent_at_kill + 10_000,
        timeout_s=20,
        what="10,000 ticks sent while Redis is down",
    )
    assert ing.publisher.spooled_total > 0 and ing.status == "connected"
    private_redis.start()
    await until(
        lambda: ing.publisher.redis_ok and ing.publisher.idle, timeout_s=90, what="spool replayed"
    )
    ing.stop()
    assert await asyncio.wait_for(task, 20) == 0
    await ing.redis.aclose()
    await r.aclose()
    r = aredis.Redis.from_url(private_redis.url)  # a fresh connection to the restarted server
    for m in members:
        market, _, code = m.split(":")
        entries = await r.xrange(keys.ticks(market))
        cums = [
            orjson.loads(f[b"payload"])["cumulativeVolume"]
            for _, f in entries
            if f.get(b"code") == code.encode()
        ]
        assert len(cums) == sim.stats.sent[m], m  # nothing lost, nothing doubled
        assert cums == sorted(set(cums)), m  # in order
        assert cums[-1] == sim.stats.last_cum_volume[m]
    assert ing.publisher.dropped_total == 0
    await r.aclose()
