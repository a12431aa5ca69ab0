"""``make demo``: the whole pipeline on one machine with embedded defaults.

Redis (the real one when it answers at TOSS_REDIS_URL, else an embedded fakeredis server) ->
simulator -> ingestor -> streams -> a consumer-group worker with the ``print`` handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading

import click
import redis

from ingestor.keys import Keys
from ingestor.redisconn import async_client
from ingestor.service import Ingestor
from ingestor.settings import ConfigError, Settings, load_settings
from ingestor.simulator import Simulator

DEMO_MEMBERS = (
    "kr:trade:A005930",
    "kr:trade:A000660",
    "us:trade:US20100311002",
    "kr:index:KGG01P",
    "crypto:vwap:VWAP.KRW-BTC",
)


def _redis_answers(s: Settings) -> bool:
    try:
        with redis.Redis.from_url(s.redis_url.get_secret_value(), socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _embedded_redis() -> str:
    from fakeredis import TcpFakeServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"redis://127.0.0.1:{port}/0"


async def run_demo(seconds: float = 0.0) -> None:
    try:
        base = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if await asyncio.to_thread(_redis_answers, base):  # a sync ping: not on the loop
        click.echo(f"demo: using the real Redis at {base.redis_url_masked}")
        redis_url = base.redis_url.get_secret_value()
    else:
        redis_url = await asyncio.to_thread(_embedded_redis)
        click.echo(
            f"demo: no Redis at {base.redis_url_masked}; started an embedded one at {redis_url}"
        )
    sim = Simulator(rate=10.0, heartbeat_ms=5000)
    await sim.start()
    s = base.model_copy(
        update={
            "redis_url": load_settings(redis_url=redis_url).redis_url,
            "websocket_url": sim.ws_url,
            "guest_key_url": sim.guest_key_url,
            "instance_name": "demo",
            # its own prefix: the demo never touches a real deployment's desired set or streams
            "key_prefix": f"{base.key_prefix}-demo",
        }
    )
    keys = Keys(s.key_prefix)
    ing = Ingestor(s)
    await ing.redis.sadd(keys.subs, *DEMO_MEMBERS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ingest = asyncio.create_task(ing.run())
    from consumers.worker import Worker, WorkerOptions

    for market in ("kr", "us", "crypto"):  # a fresh 'demo' group: show live ticks, no backlog
        with contextlib.suppress(redis.RedisError):
            await ing.redis.xgroup_destroy(keys.ticks(market), "demo")

    worker = Worker(
        s,
        WorkerOptions(group="demo", handler="print", markets=("kr", "us", "crypto"), name="demo-1"),
    )
    consume = asyncio.create_task(worker.run())
    cli = f"redis-cli -u {redis_url}" if redis_url != "redis://127.0.0.1:6379/0" else "redis-cli"
    click.echo(
        "demo: simulator at "
        + sim.ws_url
        + f", ingestor and a 'print' worker running. Try in another terminal:\n"
        f"  {cli} SMEMBERS {keys.subs}\n"
        f"  {cli} XREVRANGE {keys.ticks('kr')} + - COUNT 5\n"
        f"  {cli} HGETALL {keys.health_ingestor('demo')}\n"
        f"  TOSS_KEY_PREFIX={s.key_prefix} toss-ctl status"
        + (f"   (and TOSS_REDIS_URL={redis_url})" if cli != "redis-cli" else "")
        + "\n"
        "Ctrl-C stops everything.\n"
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds or None)
    worker.stop()
    ing.stop()
    await asyncio.gather(ingest, consume, return_exceptions=True)
    cleanup = async_client(s)
    for market in ("kr", "us", "crypto"):  # no orphan group for `toss-ctl health` to flag
        with contextlib.suppress(redis.RedisError):
            await cleanup.xgroup_destroy(keys.ticks(market), "demo")
    await cleanup.aclose()
    await sim.stop()
    click.echo(f"demo: stopped ({ing.publisher.written} ticks written, {worker.processed} handled)")
