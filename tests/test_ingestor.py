"""The ingestor against the simulator over a real WebSocket and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from ingestor.keys import Keys
from ingestor.service import Ingestor
from ingestor.settings import Settings
from ingestor.simulator import MALFORMED, Simulator
from tests.conftest import eventually, sim_settings, until


@contextlib.asynccontextmanager
async def running(s: Settings) -> AsyncIterator[Ingestor]:
    ing = Ingestor(s)
    task = asyncio.create_task(ing.run())
    try:
        yield ing
    finally:
        ing.stop()
        code = await asyncio.wait_for(task, 15)
        await ing.redis.aclose()
        assert code == 0


async def states(r: aredis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    raw = await r.hgetall(keys.subs_state)
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def ticks(r: aredis.Redis, key: str) -> list[dict[str, bytes]]:
    entries = await r.xrange(key)
    return [{k.decode(): v for k, v in f.items()} for _, f in entries]


def real_ticks(entries: list[dict[str, bytes]]) -> list[dict[str, bytes]]:
    return [e for e in entries if e["channel"] != b"gap"]


async def test_ticks_land_in_the_right_streams_with_the_right_fields(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    members = [
        "kr:trade:A005930",
        "us:trade:US20100311002",
        "kr:index:KGG01P",
        "crypto:vwap:VWAP.KRW-BTC",
    ]
    await r.sadd(keys.subs, *members)
    async with running(s):

        async def all_active() -> bool:
            st = await states(r, keys)
            return all(st.get(m, {}).get("state") == "active" for m in members)

        await eventually(all_active, what="all subscriptions active")

        async def each_has_ticks() -> bool:
            return all([await r.xlen(keys.ticks(m)) >= 3 for m in ("kr", "us", "crypto")])

        await eventually(each_has_ticks, what="ticks in every market stream")
    kr = real_ticks(await ticks(r, keys.ticks("kr")))
    assert {e["code"] for e in kr} == {b"A005930", b"KGG01P"}
    trade = next(e for e in kr if e["channel"] == b"trade")
    payload = orjson.loads(trade["payload"])
    assert payload["code"] == "A005930"
    assert trade["dt"].decode() == payload["dt"]
    assert int(trade["recv_ms"]) > 1_600_000_000_000
    us = real_ticks(await ticks(r, keys.ticks("us")))
    assert {e["code"] for e in us} == {b"US20100311002"}
    assert "closeKrw" in orjson.loads(us[0]["payload"])
    crypto = real_ticks(await ticks(r, keys.ticks("crypto")))
    assert {(e["channel"], e["code"]) for e in crypto} == {(b"vwap", b"VWAP.KRW-BTC")}
    # per code, cumulativeVolume strictly increases in stream order (order preserved, no dupes)
    for code in (b"A005930", b"KGG01P"):
        cums = [orjson.loads(e["payload"])["cumulativeVolume"] for e in kr if e["code"] == code]
        assert cums == sorted(set(cums))
    # clean shutdown: health key deleted, and everything the simulator sent is in Redis
    assert not await r.exists(keys.health_ingestor(s.instance_name))
    for m in members:
        market, _, code = m.split(":")
        got = [
            e for e in real_ticks(await ticks(r, keys.ticks(market))) if e["code"] == code.encode()
        ]
        assert len(got) == sim.stats.sent[m], m


async def test_payload_is_byte_exact(settings: Settings, sim: Simulator, r: aredis.Redis) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "us:trade:US20100311002")
    async with running(s):
        await eventually(lambda: r.xlen(keys.ticks("us")), what="a US tick")
    payload = (await ticks(r, keys.ticks("us")))[0]["payload"]
    # the simulator's generator is deterministic per code: regenerate the first body
    from ingestor.simfeed import TickGen
    from ingestor.subs import Sub

    fresh = TickGen(Sub("us", "trade", "US20100311002"))
    first = orjson.loads(payload)
    again = fresh.next()
    assert first["cumulativeVolume"] == again["cumulativeVolume"]
    assert payload == orjson.dumps({**again, "dt": first["dt"]})


async def test_subscribe_and_unsubscribe_while_running(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim, reconcile_interval_s=30)  # only the nudge can make it quick
    keys = Keys(s.key_prefix)
    async with running(s) as ing:
        await until(lambda: ing.status == "connected", what="connected")

        async def listening() -> bool:  # a nudge sent before the listener subscribed is lost
            [(_, n)] = await r.pubsub_numsub(keys.control)
            return bool(n)

        await eventually(listening, what="control listener subscribed")
        await r.sadd(keys.subs, "kr:trade:A000660")
        await r.publish(keys.control, "changed")
        await until(
            lambda: sim.active_subscriptions() == {"kr:trade:A000660"},
            timeout_s=2.0,
            what="subscribed within 2 s",
        )
        await r.srem(keys.subs, "kr:trade:A000660")
        await r.publish(keys.control, "changed")
        await until(
            lambda: sim.active_subscriptions() == set(),
            timeout_s=2.0,
            what="unsubscribed within 2 s",
        )
        assert "kr:trade:A000660" not in await states(r, keys)


async def test_drop_reconnects_restores_and_writes_gaps(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    members = ["kr:trade:A005930", "kr:trade:A000660", "us:trade:US20100311002"]
    await r.sadd(keys.subs, *members)
    async with running(s) as ing:
        await until(lambda: sim.active_subscriptions() == set(members))
        for n in (1, 2):
            await until(lambda n=n: sim.stats.total_sent > 20 * n)
            await sim.drop_all()
            await until(
                lambda n=n: ing.reconnects == n and sim.active_subscriptions() == set(members),
                what=f"reconnect {n} with all subscriptions restored",
            )
            await until(lambda n=n: ing.gaps_total == 2 * n, what="gap entries")
    for market in ("kr", "us"):
        entries = await ticks(r, keys.ticks(market))
        gaps = [e for e in entries if e["channel"] == b"gap"]
        assert len(gaps) == 2, market
        for g in gaps:
            assert int(g["from_ms"]) <= int(g["to_ms"])
            assert g["reason"]
    for m in members:
        market, _, code = m.split(":")
        got = [e for e in await ticks(r, keys.ticks(market)) if e["code"] == code.encode()]
        assert len(got) == sim.stats.sent[m], m


async def test_heartbeat_stall_makes_it_reconnect(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A005930")
    sim.set_scenario(stall_after_s=0.5)
    async with running(s) as ing:
        await until(lambda: sim.stats.connections >= 1)
        sim.set_scenario(stall_after_s=0.0)
        await until(
            lambda: ing.reconnects >= 1 and ing.status == "connected",
            what="reconnect after the stall",
        )
        assert any("no data or heart-beat" in why for why in ing.disconnect_reasons)


async def test_rejected_guest_key_gives_bounded_attempts(
    settings: Settings, sim: Simulator, r: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    sim.set_scenario(reject_key=True)
    s = sim_settings(settings, sim, max_reconnect_attempts=3, reconnect_max_s=0.1)
    ing = Ingestor(s)
    code = await asyncio.wait_for(ing.run(), 10)
    await ing.redis.aclose()
    assert code == 1
    assert "gave up after 3 failed connection attempts" in ing.exit_reason
    assert "guest key refused: HTTP 403" in ing.exit_reason
    assert "access denied" in caplog.text


async def test_error_on_connect_is_access_denied(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.set_scenario(reject_connect=True)
    s = sim_settings(settings, sim, max_reconnect_attempts=2, reconnect_max_s=0.1)
    ing = Ingestor(s)
    assert await asyncio.wait_for(ing.run(), 10) == 1
    await ing.redis.aclose()
    assert "server refused CONNECT: Unauthorized" in ing.exit_reason


async def test_over_budget_invalid_and_refused_members_get_their_states(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.set_scenario(refuse_codes=frozenset({"A000020"}))
    s = sim_settings(settings, sim, subscription_budget=2)
    keys = Keys(s.key_prefix)
    good = ["kr:trade:A005930", "kr:trade:A000660", "kr:trade:A000020", "kr:trade:A035420"]
    garbage = ["kr:trade:AAPL", "hello", "xx:trade:A005930"]
    await r.sadd(keys.subs, *good, *garbage)
    async with running(s):

        async def settled() -> dict[str, dict[str, Any]] | None:
            st = await states(r, keys)
            ok = st.get("kr:trade:A005930", {}).get("state") == "active"
            return st if ok and st.get("kr:trade:A000020", {}).get("state") == "failed" else None

        st = await eventually(settled, what="states settled")
    assert st["kr:trade:A000020"]["error"].startswith("Subscription refused")
    for g in garbage:
        assert st[g]["state"] == "invalid", g
    assert "ticker" in st["kr:trade:AAPL"]["error"] or "KR stock" in st["kr:trade:AAPL"]["error"]
    over = [m for m in good if st[m]["state"] == "failed" and "budget" in st[m]["error"]]
    assert len(over) == 1
    active = [m for m in good if st[m]["state"] == "active"]
    assert len(active) == 2


async def test_malformed_frames_are_counted_and_ingestor_carries_on(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.set_scenario(malformed_every=3)
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A005930")
    async with running(s) as ing:
        await until(
            lambda: sum(sim.stats.malformed_sent.values()) >= len(MALFORMED) + 2,
            what="every kind of malformed frame sent",
        )
        await until(lambda: ing.invalid_total >= len(MALFORMED), what="counted")
        assert ing.status == "connected" and ing.reconnects == 0
    reasons = {e[1][b"reason"].decode() for e in await r.xrange(keys.invalid)}
    assert {
        "bad_command",
        "bad_header",
        "missing_nul",
        "bad_encoding",
        "frame_too_large",
        "not_json",
        "unknown_subscription",
        "bad_content_length",
    } <= reasons
    got = real_ticks(await ticks(r, keys.ticks("kr")))
    assert len(got) == sim.stats.sent["kr:trade:A005930"]


async def test_guest_key_never_reaches_redis_or_logs(
    settings: Settings, sim: Simulator, r: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    s = sim_settings(settings, sim, log_level="DEBUG")
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A005930")
    async with running(s) as ing:
        await eventually(lambda: r.xlen(keys.ticks("kr")))
        await eventually(lambda: r.exists(keys.health_ingestor(s.instance_name)))
        device_id = ing.source._device_id
        dump = []
        async for key in r.scan_iter(match=f"{s.key_prefix}:*"):
            t = (await r.type(key)).decode()
            if t == "hash":
                dump.append(repr(await r.hgetall(key)))
            elif t == "stream":
                dump.append(repr(await r.xrange(key)))
            elif t == "set":
                dump.append(repr(await r.smembers(key)))
    assert sim.issued_keys
    text = "\n".join(dump) + caplog.text
    for secret in [*sim.issued_keys, device_id]:
        assert secret not in text
    assert "A005930" in text  # the dump did see the data


async def test_stop_with_a_full_queue_flushes_everything(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.rate = 3000
    s = sim_settings(settings, sim, publish_batch_max=1)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A005930", "kr:trade:A000660")
    ing = Ingestor(s)
    task = asyncio.create_task(ing.run())

    async def stopped_with_backlog() -> int:
        depth = ing.publisher.depth
        if depth > 3 and sim.stats.total_sent > 100:
            ing.stop()  # same instant as the observation: the backlog is there
            return depth
        return 0

    backlog = await eventually(stopped_with_backlog, what="a backlog in the queue")
    assert await asyncio.wait_for(task, 15) == 0
    await ing.redis.aclose()
    got = real_ticks(await ticks(r, keys.ticks("kr")))
    assert backlog > 3
    assert len(got) == ing.ticks_total == sim.stats.total_sent


async def test_uncompressed_feed_goes_through_the_fast_path_byte_exact(
    settings: Settings, r: aredis.Redis
) -> None:
    """Without permessage-deflate every feed message is cut out of the socket bytes by the fast
    path (tests/test_wsframes.py); the entries are the same as through websockets' parser."""
    from ingestor.feed import _SinkConnection
    from ingestor.simfeed import TickGen
    from ingestor.simulator import Scenario
    from ingestor.subs import Sub

    plain = Simulator(rate=500.0, scenario=Scenario(), heartbeat_ms=500, compression=None)
    async with plain as sim:
        s = sim_settings(settings, sim)
        keys = Keys(s.key_prefix)
        await r.sadd(keys.subs, "kr:trade:A005930")
        async with running(s) as ing:
            await eventually(lambda: r.xlen(keys.ticks("kr")), what="a KR tick")
            assert ing.conn is not None and isinstance(ing.conn.ws, _SinkConnection)
            assert ing.conn.ws.fast_messages > 0
    entries = real_ticks(await ticks(r, keys.ticks("kr")))
    gen = TickGen(Sub("kr", "trade", "A005930"))
    for entry in entries[:50]:
        expected = gen.next()
        assert entry["payload"] == orjson.dumps({**expected, "dt": entry["dt"].decode()})
