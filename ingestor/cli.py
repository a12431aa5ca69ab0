"""``toss-ingest``: run the ingestor, run the simulator, check health, run the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import NoReturn

import click

from ingestor import cliutil
from ingestor.cliutil import EXIT_UNHEALTHY, EXIT_USAGE, env_file_option

PROG = "toss-ingest"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs whole frames at DEBUG (CONNECT carries the guest key): never below INFO.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))


def fail(message: str, code: int) -> NoReturn:
    cliutil.fail(PROG, message, code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Toss real-time feed -> Redis Streams."""


@main.command()
@env_file_option
@click.option("--symbols", default=None, help="comma-separated codes to add to the desired set")
@click.option("--market", default=None, help="market of --symbols: kr, us or crypto")
@click.option("--channel", default=None, help="channel of --symbols (default: trade; crypto: vwap)")
@click.option("--name", default=None, help="instance name (heartbeat key); default: host name")
def run(
    env_file: str | None,
    symbols: str | None,
    market: str | None,
    channel: str | None,
    name: str | None,
) -> None:
    """Keep the feed connection and XADD every tick into per-market streams."""
    from ingestor.errors import IngestError
    from ingestor.redisconn import describe
    from ingestor.service import Ingestor
    from ingestor.sources.toss_web import normalise

    s = cliutil.settings_or_exit(PROG, env_file, instance_name=name)
    subs = []
    if symbols:
        if not market:
            fail("--symbols needs --market (kr, us or crypto)", EXIT_USAGE)
        try:
            subs = [normalise(market or "", c, channel) for c in symbols.split(",") if c.strip()]
        except IngestError as exc:
            fail(str(exc), EXIT_USAGE)
    setup_logging(s.log_level)

    async def go() -> int:
        try:
            ing = Ingestor(s)
        except IngestError as exc:
            fail(str(exc), EXIT_USAGE)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, ing.stop)
        try:
            await ing.add_symbols(subs)
            code = await ing.run()
        finally:
            await ing.redis.aclose()
        if code:
            click.echo(f"toss-ingest: {ing.exit_reason}", err=True)
        return code

    try:
        sys.exit(asyncio.run(go()))
    except (OSError, ConnectionError, TimeoutError) as exc:
        fail(describe(exc, s), EXIT_UNHEALTHY)
    except Exception as exc:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            fail(describe(exc, s), EXIT_UNHEALTHY)
        raise


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--rate", default=20.0, show_default=True, type=float, help="ticks/s per connection")
@click.option("--heartbeat-ms", default=5000, show_default=True, type=int)
@click.option("--budget", default=100, show_default=True, type=int, help="subscriptions/connection")
@click.option(
    "--scenario",
    default="normal",
    show_default=True,
    help="normal, drop, stall, error, malformed, reject-key, reject-connect, "
    "close-during-connect, slow",
)
def simulate(
    host: str, port: int, rate: float, heartbeat_ms: int, budget: int, scenario: str
) -> None:
    """Serve a local imitation of the Toss web feed (guest key + STOMP over WebSocket)."""
    from dataclasses import replace

    from ingestor.simulator import SCENARIOS, serve_forever

    if scenario not in SCENARIOS:
        fail(f"unknown scenario {scenario!r}: use {', '.join(SCENARIOS)}", EXIT_USAGE)
    setup_logging("INFO")
    sc = replace(SCENARIOS[scenario], budget=budget)
    try:
        asyncio.run(serve_forever(host, port, rate, sc, heartbeat_ms))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_UNHEALTHY)


@main.command()
@env_file_option
@click.option("--name", default=None, help="instance name; default: host name")
def check(env_file: str | None, name: str | None) -> None:
    """Exit 0 when this ingestor's heartbeat is fresh and not critical, else 1."""
    from ingestor.keys import Keys

    s = cliutil.settings_or_exit(PROG, env_file, instance_name=name)
    key = Keys(s.key_prefix).health_ingestor(s.instance_name)
    cliutil.check_heartbeat(PROG, s, key, s.instance_name)


@main.command()
@click.option("--seconds", default=0.0, type=float, help="stop after this long (0: until Ctrl-C)")
def demo(seconds: float) -> None:
    """Simulator -> ingestor -> Redis -> consumer, on embedded defaults. Ctrl-C stops."""
    from ingestor.demo import run_demo

    setup_logging("WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(seconds))


if __name__ == "__main__":
    main()
