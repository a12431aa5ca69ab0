"""Long reliability runs (the CI tests run short versions of the same). Loopback only; each stops
by itself and prints a verdict line per check.

    .venv/bin/python bench/soak.py outage [--rate 5000] [--outage-s 30]
    .venv/bin/python bench/soak.py drops [--every-s 3] [--duration-s 60]
    .venv/bin/python bench/soak.py fuzz [--examples 100000]

outage: the simulator at RATE ticks/s, `toss-ingest run` as a subprocess, a private redis-server
(AOF, fsync always) on another port, SIGKILLed for OUTAGE_S and restarted. Checks every tick the
simulator sent is in the streams, in order, no duplicates; reports the ingestor's peak RSS.
drops: the WebSocket is closed every EVERY_S for DURATION_S. Checks one reconnect per drop, one gap
entry per stream per drop, every subscription restored, and the tick count.
fuzz: random and structured bytes into the STOMP parser, random bodies into the tick mapper; only
the codec's own errors may come out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis.asyncio as aredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestor.keys import Keys  # noqa: E402
from ingestor.simulator import Scenario, Simulator  # noqa: E402
from tests.conftest import PrivateRedis  # noqa: E402

MEMBERS = [
    "kr:trade:A005930",
    "kr:trade:A000660",
    "us:trade:US20100311002",
    "crypto:vwap:VWAP.KRW-BTC",
]


def verdict(ok: bool, what: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    return ok


async def wait_for(pred: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.1)
    return False


def ingestor_env(
    url: str, sim: Simulator, prefix: str, spool: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOSS_")}
    env.update(
        TOSS_REDIS_URL=url,
        TOSS_KEY_PREFIX=prefix,
        TOSS_WEBSOCKET_URL=sim.ws_url,
        TOSS_GUEST_KEY_URL=sim.guest_key_url,
        TOSS_SPOOL_DIR=str(spool),
        TOSS_INSTANCE_NAME="soak",
        TOSS_REDIS_SOCKET_TIMEOUT_S="1",
        TOSS_HEALTH_INTERVAL_S="0.5",
        TOSS_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


async def check_streams(r: aredis.Redis, keys: Keys, sim: Simulator) -> bool:
    ok = True
    for m in MEMBERS:
        market, _, code = m.split(":")
        cums = [
            orjson.loads(f[b"payload"])["cumulativeVolume"]
            for _, f in await r.xrange(keys.ticks(market))
            if f.get(b"code") == code.encode()
        ]
        ok &= verdict(
            len(cums) == sim.stats.sent[m] and cums == sorted(set(cums)),
            f"{m}: {len(cums)} in Redis, {sim.stats.sent[m]} sent, in order, no duplicates",
        )
    return ok


async def outage(rate: float, outage_s: float) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        pr = PrivateRedis(Path(tmp))
        pr.start()
        sim = Simulator(rate=rate, heartbeat_ms=5000)
        await sim.start()
        keys = Keys("soak")
        r = aredis.Redis.from_url(pr.url)
        await r.sadd(keys.subs, *MEMBERS)
        env = ingestor_env(pr.url, sim, "soak", Path(tmp) / "spool")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingestor.cli", "run", env=env, cwd=ROOT
        )
        ps = psutil.Process(proc.pid)
        peak = 0.0
        samples: list[tuple[float, float]] = []

        async def sample() -> None:
            nonlocal peak
            t0 = time.monotonic()
            while True:
                rss = ps.memory_info().rss / 1048576
                peak = max(peak, rss)
                samples.append((time.monotonic() - t0, rss))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await wait_for(lambda: asyncio.sleep(0, sim.stats.total_sent > rate * 3), 30)
        rss_before = ps.memory_info().rss / 1048576
        pr.kill()
        down_at = sim.stats.total_sent
        print(f"Redis killed; outage of {outage_s:g} s at {rate:g} ticks/s", flush=True)
        await asyncio.sleep(outage_s)  # the outage itself is the thing being measured
        sent_in_outage = sim.stats.total_sent - down_at
        rss_end_of_outage = ps.memory_info().rss / 1048576
        pr.start()
        r = aredis.Redis.from_url(pr.url)

        async def drained() -> bool:
            h = await r.hgetall(keys.health_ingestor("soak"))
            return h.get(b"queue_depth") == b"0" and h.get(b"spool_bytes") == b"0"

        await wait_for(drained, 120)
        proc.terminate()
        await proc.wait()
        sampler.cancel()
        await sim.stop()
        r = aredis.Redis.from_url(pr.url)
        ok = await check_streams(r, keys, sim)
        ok &= verdict(proc.returncode == 0, f"ingestor exited {proc.returncode}")
        print(
            f"ticks sent during the outage: {sent_in_outage}; "
            f"ingestor RSS before {rss_before:.1f} MB, "
            f"at the end of the outage {rss_end_of_outage:.1f} MB, peak {peak:.1f} MB"
        )
        await r.aclose()
        pr.kill()
        return ok


async def drops(every_s: float, duration_s: float) -> bool:
    from ingestor.service import Ingestor
    from ingestor.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        pr = PrivateRedis(Path(tmp))
        pr.start()
        sim = Simulator(rate=500, heartbeat_ms=2000, scenario=Scenario(drop_every_s=every_s))
        await sim.start()
        keys = Keys("soak")
        r = aredis.Redis.from_url(pr.url)
        await r.sadd(keys.subs, *MEMBERS)
        s = load_settings(
            redis_url=pr.url,
            key_prefix="soak",
            websocket_url=sim.ws_url,
            guest_key_url=sim.guest_key_url,
            reconnect_initial_s=0.1,
            reconnect_max_s=0.5,
            spool_dir=Path(tmp) / "spool",
            heartbeat_interval_ms=2000,
        )
        ing = Ingestor(s)
        task = asyncio.create_task(ing.run())
        await asyncio.sleep(duration_s)  # the soak itself
        sim.set_scenario(drop_every_s=0.0)
        await wait_for(
            lambda: asyncio.sleep(
                0, ing.status == "connected" and sim.active_subscriptions() == set(MEMBERS)
            ),
            30,
        )
        await asyncio.sleep(1)
        ing.stop()
        await task
        await ing.redis.aclose()
        await sim.stop()
        n = sim.stats.drops
        ok = verdict(ing.reconnects == n, f"{n} drops, {ing.reconnects} reconnects")
        for market in ("kr", "us", "crypto"):
            gaps = [f for _, f in await r.xrange(keys.ticks(market)) if f[b"channel"] == b"gap"]
            ok &= verdict(len(gaps) == n, f"{market}: {len(gaps)} gap entries for {n} drops")
        ok &= await check_streams(r, keys, sim)
        await r.aclose()
        pr.kill()
        return ok


def fuzz(examples: int) -> bool:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from ingestor import stomp
    from ingestor.service import Ingestor, Route
    from ingestor.settings import load_settings
    from ingestor.subs import Sub

    count = {"parser": 0, "mapper": 0}
    opts = settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )

    @opts
    @given(
        st.binary(max_size=600)
        | st.lists(
            st.sampled_from(
                [
                    b"MESSAGE",
                    b"\n",
                    b"\r\n",
                    b":",
                    b"\x00",
                    b"content-length:",
                    b"9",
                    b"\\",
                    b"\\c",
                    b"subscription:1",
                    b"\xff",
                    b"{}",
                ]
            ),
            max_size=60,
        ).map(b"".join)
    )
    def parser(data: bytes) -> None:
        count["parser"] += 1
        for item in stomp.Parser(stomp.Limits(max_frame_bytes=2048)).feed(data):
            assert isinstance(item, stomp.Frame | stomp.StompError)

    ing = Ingestor(load_settings(spool_max_mb=0))
    ing.routes["1"] = Route(Sub("kr", "trade", "A005930"), "x", "r")

    @opts
    @given(st.binary(max_size=400), st.sampled_from(["1", "2", ""]))
    def mapper(body: bytes, sub_id: str) -> None:
        count["mapper"] += 1
        ing.on_message(stomp.Frame("MESSAGE", [("subscription", sub_id)], body), 1)
        ing.publisher._queue.clear()

    parser()
    mapper()
    return verdict(
        True,
        f"fuzz: {count['parser']} parser inputs, {count['mapper']} mapper inputs, "
        "only codec errors",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    o = sub.add_parser("outage")
    o.add_argument("--rate", type=float, default=5000)
    o.add_argument("--outage-s", type=float, default=30)
    d = sub.add_parser("drops")
    d.add_argument("--every-s", type=float, default=3)
    d.add_argument("--duration-s", type=float, default=60)
    f = sub.add_parser("fuzz")
    f.add_argument("--examples", type=int, default=100_000)
    a = ap.parse_args()
    if a.what == "outage":
        ok = asyncio.run(outage(a.rate, a.outage_s))
    elif a.what == "drops":
        ok = asyncio.run(drops(a.every_s, a.duration_s))
    else:
        ok = fuzz(a.examples)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
