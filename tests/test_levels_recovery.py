"""Health levels from synthetic metrics (no sleeps), and the automatic recoveries: refused
subscriptions retried with backoff, the memory hard limit (flush, gap, exit 3, restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from ingestor.health import assess
from ingestor.keys import Keys
from ingestor.levels import consumer_level, ingestor_level
from ingestor.service import EXIT_MEMORY, Ingestor
from ingestor.settings import Settings, load_settings
from ingestor.simulator import Simulator
from tests.conftest import eventually, sim_settings, until
from tests.test_ingestor import real_ticks, running, ticks

S = load_settings()
OK = {"connected": 1, "desired": 10, "frames_total": 1000, "cpu_percent": 5, "rss_mb": 60}


@pytest.mark.parametrize(
    ("changes", "level", "reason"),
    [
        ({}, "healthy", ""),
        ({"connected": 0, "down_s": 5}, "degraded", "transport down for 5 s"),
        ({"connected": 0, "down_s": 61}, "critical", "transport down for 61 s"),
        ({"reconnects_last_hour": 12}, "degraded", "reconnects in the last hour 12"),
        ({"reconnects_last_hour": 60}, "critical", "reconnects in the last hour 60"),
        ({"failed": 1}, "degraded", "1 of 10 subscriptions failed"),
        ({"failed": 5}, "critical", "5 of 10 subscriptions failed"),
        ({"invalid_total": 2}, "degraded", "invalid frame ratio 0.002"),
        ({"invalid_total": 60}, "critical", "invalid frame ratio 0.06"),
        ({"queue_depth": 6000}, "degraded", "queue fill 0.6"),
        ({"queue_depth": 9500}, "critical", "queue fill 0.95"),
        ({"spool_bytes": 1 << 20}, "degraded", "spool in use"),
        ({"spool_bytes": 500 << 20}, "critical", "spool in use"),
        ({"cpu_percent": 95}, "degraded", "cpu % 95"),
        ({"rss_mb": 300}, "degraded", "rss MB 300"),
        ({"rss_mb": 2000}, "critical", "rss MB 2000"),
    ],
)
def test_ingestor_levels(changes: dict[str, float], level: str, reason: str) -> None:
    got, reasons = ingestor_level({**OK, **changes}, S)
    assert got == level
    assert reason in "; ".join(reasons)


def test_tick_age_only_counts_when_enabled_and_subscribed() -> None:
    m = {**OK, "active": 3, "last_tick_age_s": 600}
    assert ingestor_level(m, S)[0] == "healthy"  # off by default: markets close at night
    on = S.model_copy(update={"health_tick_age_s": 300})
    assert ingestor_level(m, on) == (
        "degraded",
        ["degraded: no tick for 600 s with subscriptions active"],
    )
    assert ingestor_level({**m, "active": 0}, on)[0] == "healthy"


@pytest.mark.parametrize(
    ("m", "level", "reason"),
    [
        ({"lag": 5}, "healthy", ""),
        ({"lag": 20_000}, "degraded", "lag 20000"),
        ({"lag": 2_000_000}, "critical", "lag 2e+06"),
        ({"pending_age_s": 90}, "degraded", "oldest pending (s) 90"),
        ({"batches": 100, "failed_batches": 2}, "degraded", "handler error ratio 0.02"),
        ({"batches": 10, "failed_batches": 6}, "critical", "handler error ratio 0.6"),
        ({"dead_lettered": 3}, "degraded", "3 entries dead-lettered"),
    ],
)
def test_consumer_levels(m: dict[str, float], level: str, reason: str) -> None:
    got, reasons = consumer_level(m, S)
    assert got == level and reason in "; ".join(reasons)


def test_assess_fails_on_critical_and_stale_only() -> None:
    now = 1_000_000
    fresh = {"updated_ms": str(now), "status": "connected", "role": "ingestor"}
    assert assess({**fresh, "level": "degraded", "reasons": "x"}, 2.0, now).ok
    v = assess({**fresh, "level": "critical", "reasons": "degraded: y; critical: z"}, 2.0, now)
    assert not v.ok and "critical: z" in v.reason
    assert not assess({**fresh, "updated_ms": str(now - 60_000)}, 2.0, now).ok
    assert not assess({}, 2.0, now).ok


async def test_refused_subscription_is_retried_with_backoff(
    settings: Settings, sim: Simulator, r: aredis.Redis
) -> None:
    sim.set_scenario(refuse_codes=frozenset({"A000020"}))
    s = sim_settings(settings, sim, failed_retry_initial_s=0.3, failed_retry_max_s=1.0)
    keys = Keys(s.key_prefix)
    await r.sadd(keys.subs, "kr:trade:A000020", "kr:trade:A005930")
    async with running(s) as ing:
        await until(lambda: ing.failed.get("kr:trade:A000020") is not None, what="refused")
        await until(
            lambda: (f := ing.failed.get("kr:trade:A000020")) is not None and f.attempts >= 2,
            what="retried and refused again",
        )
        assert ing.recoveries["subscription_retry"] >= 1
        sim.set_scenario(refuse_codes=frozenset())
        await until(
            lambda: ing.states["kr:trade:A000020"].state == "active",
            timeout_s=10,
            what="active after the server accepts it",
        )
        assert "kr:trade:A000020" not in ing.failed
        await until(lambda: ing.recoveries["reconnect"] >= 1)

        async def active_in_redis() -> bool:
            raw = await r.hget(keys.subs_state, "kr:trade:A000020")
            return bool(raw) and orjson.loads(raw)["state"] == "active"

        await eventually(active_in_redis, what="state active in Redis")


async def test_memory_hard_limit_flushes_exits_3_and_a_restart_loses_nothing(
    settings: Settings, sim: Simulator, r: aredis.Redis, tmp_path: Path
) -> None:
    sim.rate = 1000
    s = sim_settings(settings, sim, spool_dir=tmp_path / "spool")
    keys = Keys(s.key_prefix)
    members = ["kr:trade:A005930", "us:trade:US20100311002"]
    await r.sadd(keys.subs, *members)
    ing = Ingestor(s)
    task = asyncio.create_task(ing.run())
    await until(lambda: ing.ticks_total > 200, what="ticks flowing")
    ing.memory.hard_mb = 1  # any process is over 1 MB: the next heartbeat trips it
    assert await asyncio.wait_for(task, 20) == EXIT_MEMORY
    await ing.redis.aclose()
    assert "hard limit" in ing.exit_reason and ing.recoveries["memory_hard_limit"] == 1
    assert (tmp_path / "spool" / s.instance_name / "open-gap.json").exists()
    sent_before = dict(sim.stats.sent)
    for m in members:  # everything received before the exit is in Redis
        market, _, code = m.split(":")
        got = [
            e for e in real_ticks(await ticks(r, keys.ticks(market))) if e["code"] == code.encode()
        ]
        assert len(got) == sent_before[m]
    async with running(s) as again:  # the supervisor's restart
        await until(lambda: again.gaps_total == 2 and again.ticks_total > 100, what="restarted")
        gap_file = tmp_path / "spool" / s.instance_name / "open-gap.json"
        await until(lambda: not gap_file.exists(), what="the restart's gap closed")
    for m in members:
        market, _, code = m.split(":")
        entries = await ticks(r, keys.ticks(market))
        gaps = [e for e in entries if e["channel"] == b"gap"]
        assert len(gaps) == 1 and b"memory hard limit" in gaps[0]["reason"]
        got = [e for e in real_ticks(entries) if e["code"] == code.encode()]
        assert len(got) == sim.stats.sent[m]


def test_memory_guard_verdicts() -> None:
    from ingestor.guard import MemoryGuard

    g = MemoryGuard(soft_mb=100, hard_mb=200)
    assert [g.check(x) for x in (50, 120, 130, 90, 110, 250, 260)] == [
        None,
        "soft",
        None,
        None,
        "soft",
        "hard",
        None,
    ]
    assert MemoryGuard(0, 0).check(10_000) is None
