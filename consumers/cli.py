"""``toss-consume``: run consumer-group workers; check their heartbeat."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, NoReturn

import click

from ingestor import cliutil
from ingestor.cli import setup_logging
from ingestor.cliutil import EXIT_UNHEALTHY, EXIT_USAGE, env_file_option
from ingestor.keys import MARKETS

PROG = "toss-consume"


def _fail(message: str, code: int) -> NoReturn:
    cliutil.fail(PROG, message, code)


def _stop_all(workers: list[Any]) -> None:
    for w in workers:
        w.stop()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Consumer-group workers for the toss tick streams."""


@main.command()
@env_file_option
@click.option("--group", required=True, help="consumer group name")
@click.option(
    "--handler",
    default="print",
    show_default=True,
    help="print, jsonl, latest, bars, noop, or package.module:function",
)
@click.option("--markets", default=",".join(MARKETS), show_default=True)
@click.option("--name", default=None, help="consumer name (default: host-pid)")
@click.option(
    "--batch",
    default=None,
    type=click.IntRange(1, 100_000),
    help="entries per read and per handler call (default TOSS_CONSUMER_BATCH, 200)",
)
@click.option(
    "--concurrency",
    default=None,
    type=click.IntRange(1, 64),
    help="read loops in this process (default TOSS_WORKER_THREAD_COUNT)",
)
@click.option("--from-start", is_flag=True, help="a new group reads the stream history too")
@click.option("--burst", is_flag=True, help="exit when nothing is left to read or retry")
def run(
    env_file: str | None,
    group: str,
    handler: str,
    markets: str,
    name: str | None,
    batch: int | None,
    concurrency: int | None,
    from_start: bool,
    burst: bool,
) -> None:
    """Read the streams with XREADGROUP, run HANDLER, ACK."""
    from consumers.handlers import HandlerError
    from consumers.worker import Worker, WorkerOptions
    from ingestor.redisconn import describe

    s = cliutil.settings_or_exit(PROG, env_file)
    ms = tuple(m.strip().lower() for m in markets.split(",") if m.strip())
    bad = [m for m in ms if m not in MARKETS]
    if bad or not ms:
        _fail(f"unknown market {','.join(bad) or markets!r}: use {', '.join(MARKETS)}", EXIT_USAGE)
    setup_logging(s.log_level)
    n = concurrency or s.worker_thread_count
    base = WorkerOptions(
        group=group, handler=handler, markets=ms, batch=batch, from_start=from_start, burst=burst
    )
    base_name = name or base.name
    try:
        workers = [
            Worker(
                s,
                WorkerOptions(
                    **{**base.__dict__, "name": base_name if n == 1 else f"{base_name}-{i}"}
                ),
            )
            for i in range(n)
        ]
    except HandlerError as exc:
        _fail(str(exc), EXIT_USAGE)

    async def go() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop_all, workers)
        await workers[0].redis.ping()
        codes = await asyncio.gather(*(w.run() for w in workers))
        for w in workers:
            await w.redis.aclose()
        return max(codes)

    try:
        sys.exit(asyncio.run(go()))
    except Exception as exc:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError | OSError):
            _fail(describe(exc, s), EXIT_UNHEALTHY)
        raise


@main.command()
@env_file_option
@click.option("--group", required=True)
@click.option("--name", required=True)
def check(env_file: str | None, group: str, name: str) -> None:
    """Exit 0 when this consumer's heartbeat is fresh and not critical, else 1."""
    from ingestor.keys import Keys

    s = cliutil.settings_or_exit(PROG, env_file)
    key = Keys(s.key_prefix).health_consumer(group, name)
    cliutil.check_heartbeat(PROG, s, key, f"{group}/{name}")


if __name__ == "__main__":
    main()
