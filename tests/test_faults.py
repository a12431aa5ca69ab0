"""Fault suite: the feed misbehaves, the ingestor copes. Short durations here; bench/soak.py runs
the long versions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.keys import Keys
from ingestor.service import Ingestor
from ingestor.settings import Settings
from ingestor.simulator import Simulator
from ingestor.stomp import Frame
from tests.conftest import eventually, sim_settings, until
from tests.test_ingestor import real_ticks, running, ticks

MEMBERS = ["kr:trade:A005930", "us:trade:US20100311002"]


async def test_drop_every_second_one_reconnect_and_one_gap_per_stream_per_drop(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, *MEMBERS)
    sim.set_scenario(drop_every_s=1.0)
    async with running(s) as ing:
        await until(lambda: sim.stats.drops >= 4, timeout_s=20, what="four drops")
        sim.set_scenario(drop_every_s=0.0)
        await until(
            lambda: (
                ing.reconnects == sim.stats.drops
                and ing.status == "connected"
                and sim.active_subscriptions() == set(MEMBERS)
                and ing.gaps_total == 2 * sim.stats.drops
            ),
            what="every drop reconnected, restored and gapped",
        )
    drops = sim.stats.drops
    for m in MEMBERS:
        market, _, code = m.split(":")
        entries = await ticks(r, keys.ticks(market))
        assert len([e for e in entries if e["channel"] == b"gap"]) == drops
        got = [e for e in real_ticks(entries) if e["code"] == code.encode()]
        assert len(got) == sim.stats.sent[m]


@pytest.mark.parametrize(
    ("scenario", "why"),
    [
        ({"error_after_s": 0.5}, "server ERROR: Internal server error"),
        ({"slow_send_ms": 30.0, "drop_every_s": 1.0}, "connection closed by server"),
    ],
)
async def test_server_error_or_slow_server_mid_session(
    settings: Settings, sim: Simulator, r: aredis.Redis, scenario: dict[str, float], why: str
) -> None:
    s = sim_settings(settings, sim)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, *MEMBERS)
    sim.set_scenario(**scenario)
    async with running(s) as ing:
        await until(lambda: ing.reconnects >= 1, timeout_s=10, what="a reconnect")
        sim.set_scenario(error_after_s=0.0, slow_send_ms=0.0, drop_every_s=0.0)
        await until(
            lambda: ing.status == "connected" and sim.active_subscriptions() == set(MEMBERS),
            what="restored",
        )
        assert any(why in reason for reason in ing.disconnect_reasons), ing.disconnect_reasons
        assert not any("heart-beat" in reason for reason in ing.disconnect_reasons)


async def test_server_closing_during_connect_is_retried(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    s = sim_settings(settings, sim, max_reconnect_attempts=0)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A005930")
    sim.set_scenario(close_during_connect=True)
    async with running(s) as ing:
        await until(lambda: sim.stats.connects_refused >= 2, what="two refused CONNECTs")
        assert ing.status in ("connecting", "backing-off")
        assert "during CONNECT" in ing.status_reason or "closed" in ing.status_reason
        sim.set_scenario(close_during_connect=False)
        await until(lambda: ing.status == "connected", what="connected once the server behaves")
        await until(lambda: ing.ticks_total > 0)


async def test_health_key_says_why_access_is_denied(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.set_scenario(reject_key=True)
    s = sim_settings(settings, sim, max_reconnect_attempts=0, reconnect_max_s=0.2)
    keys = Keys(s.key_prefix)
    async with running(s):

        async def says_why() -> bool:
            h = await r.hgetall(keys.health_ingestor(s.instance_name))
            reason = h.get(b"status_reason", b"").decode()
            return h.get(b"status") != b"connected" and "guest key refused: HTTP 403" in reason

        await eventually(says_why, what="health key with the reason")


async def test_sigterm_to_the_ingestor_process_flushes_and_exits_0(
    settings: Settings, sim: Simulator, r: aredis.Redis, tmp_path: Path
) -> None:
    sim.rate = 3000
    keys = Keys(settings.key_prefix)
    await r.sadd(keys.subs, *MEMBERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOSS_")}
    env.update(
        TOSS_REDIS_URL=settings.redis_url.get_secret_value(),
        TOSS_KEY_PREFIX=settings.key_prefix,
        TOSS_WEBSOCKET_URL=sim.ws_url,
        TOSS_GUEST_KEY_URL=sim.guest_key_url,
        TOSS_SPOOL_DIR=str(tmp_path / "spool"),
        TOSS_INSTANCE_NAME="sigterm-test",
    )
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingestor.cli",
        "run",
        env=env,
        cwd=Path(__file__).parent.parent,
        stderr=subprocess.PIPE,
    )
    await until(lambda: sim.stats.total_sent > 1000, what="ticks flowing")
    p.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(p.communicate(), 20)
    assert p.returncode == 0, err.decode()
    for m in MEMBERS:
        market, _, code = m.split(":")
        got = [
            e for e in real_ticks(await ticks(r, keys.ticks(market))) if e["code"] == code.encode()
        ]
        assert len(got) == sim.stats.sent[m]
    assert not await r.exists(keys.health_ingestor("sigterm-test"))
    assert "ingestor stopped" in err.decode()


class _Mapper:
    """An ingestor's frame handler, with a live route, fed frames directly (no socket)."""

    def __init__(self, settings: Settings) -> None:
        from ingestor.service import Route
        from ingestor.subs import Sub

        self.ing = Ingestor(settings)
        self.ing.routes["1"] = Route(Sub("kr", "trade", "A005930"), "x:ticks:kr", "r-1")


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300),
    sub_id=st.sampled_from(["1", "2", ""]),
)
def test_tick_mapper_fuzz_counts_or_queues_never_raises(body: bytes, sub_id: str) -> None:
    m = _MAPPER
    before = m.ing.ticks_total + m.ing.invalid_total
    m.ing.on_message(Frame("MESSAGE", [("subscription", sub_id)], body), 1)
    assert m.ing.ticks_total + m.ing.invalid_total == before + 1
    if m.ing.publisher.depth > 1000:
        m.ing.publisher._queue.clear()


_MAPPER: _Mapper


@pytest.fixture(autouse=True, scope="module")
def _mapper() -> None:
    global _MAPPER
    from ingestor.settings import load_settings

    _MAPPER = _Mapper(load_settings(spool_max_mb=0))


def test_mapper_keeps_payload_verbatim() -> None:
    body = b'{"code":"A005930","dt":"2026-11-26T09:00:00+09:00","close":70000.0}'
    _MAPPER.ing.on_message(Frame("MESSAGE", [("subscription", "1")], body), 7)
    entry = _MAPPER.ing.publisher._queue[-1]
    assert entry.fields["payload"] is body and entry.fields["dt"] == "2026-11-26T09:00:00+09:00"
    assert orjson.loads(entry.fields["payload"])["close"] == 70000.0
