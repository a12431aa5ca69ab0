"""What the three CLIs (toss-ingest, toss-ctl, toss-consume) share: exit codes, the one-line
error exit, settings or a usage error, and the heartbeat check. Imports stay lazy so
``--help`` starts fast."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from ingestor.settings import Settings

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2

env_file_option = click.option(
    "--env-file", type=click.Path(dir_okay=False), default=None, help="read settings from this file"
)


def fail(prog: str, message: str, code: int) -> NoReturn:
    click.echo(f"{prog}: {message}", err=True)
    sys.exit(code)


def settings_or_exit(prog: str, env_file: str | None, **overrides: Any) -> Settings:
    from ingestor.settings import ConfigError, load_settings

    try:
        return load_settings(env_file, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(prog, str(exc), EXIT_USAGE)


def check_heartbeat(prog: str, s: Settings, key: str, label: str) -> NoReturn:
    """Print ``label: ok|unhealthy (reasons)`` for the heartbeat at ``key``; exit 0 or 1."""
    from ingestor.health import assess
    from ingestor.redisconn import describe, sync_client

    try:
        with sync_client(s) as r:
            raw = r.hgetall(key)
    except Exception as exc:
        fail(prog, describe(exc, s), EXIT_UNHEALTHY)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    verdict = assess(fields, s.health_interval_s)
    click.echo(f"{label}: {'ok' if verdict.ok else 'unhealthy'} ({verdict.reason})")
    sys.exit(EXIT_OK if verdict.ok else EXIT_UNHEALTHY)
