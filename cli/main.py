"""``toss-ctl``: change the desired subscriptions and inspect the pipeline.

Exit codes: 0 ok, 1 unhealthy or Redis unreachable, 2 bad input (nothing written).
Imports are lazy so ``toss-ctl --help`` starts fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    import redis

    from ingestor.keys import Keys
    from ingestor.settings import Settings

from ingestor.cliutil import EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE

PROG = "toss-ctl"


class Ctx:
    def __init__(self, env_file: str | None) -> None:
        self.env_file = env_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from ingestor.cliutil import settings_or_exit

            self._settings = settings_or_exit(PROG, self.env_file)
        return self._settings

    @property
    def keys(self) -> Keys:
        from ingestor.keys import Keys

        return Keys(self.settings.key_prefix)

    @contextmanager
    def redis(self) -> Iterator[redis.Redis]:
        from redis.exceptions import RedisError

        from ingestor.redisconn import describe, sync_client

        s = self.settings
        try:
            with sync_client(s) as r:
                r.ping()
                yield r
        except (RedisError, OSError) as exc:
            die(describe(exc, s), EXIT_UNHEALTHY)


def die(message: str, code: int) -> NoReturn:
    from ingestor.cliutil import fail

    fail(PROG, message, code)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


pass_ctx = click.make_pass_decorator(Ctx)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env-file", type=click.Path(dir_okay=False), default=None, help="settings file")
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """Control and inspect toss-ingest through Redis."""
    ctx.obj = Ctx(env_file)


def _subs_or_die(codes: str, market: str, channel: str | None) -> list[Any]:
    from ingestor.control import parse_codes
    from ingestor.errors import InvalidSymbol

    try:
        return parse_codes(codes, market, channel)
    except InvalidSymbol as exc:
        die(str(exc), EXIT_USAGE)


def do_change(c: Ctx, codes: str, market: str, channel: str | None, add: bool) -> None:
    from cli.ops import change

    subs = _subs_or_die(codes, market, channel)
    with c.redis() as r:
        for member, what in change(r, c.keys, subs, add):
            click.echo(f"{member}: {what}")


channel_option = click.option(
    "--channel", default=None, help="trade, index, bidoffer (kr/us), vwap (crypto)"
)


@main.command()
@click.argument("code")
@click.argument("market")
@channel_option
@pass_ctx
def subscribe(c: Ctx, code: str, market: str, channel: str | None) -> None:
    """Add CODE on MARKET (kr, us, crypto) to the desired subscriptions."""
    do_change(c, code, market, channel, add=True)


@main.command()
@click.argument("code")
@click.argument("market")
@channel_option
@pass_ctx
def unsubscribe(c: Ctx, code: str, market: str, channel: str | None) -> None:
    """Remove CODE on MARKET from the desired subscriptions."""
    do_change(c, code, market, channel, add=False)


@main.command()
@click.argument("codes")
@click.argument("market")
@channel_option
@click.option("--remove", is_flag=True, help="remove the codes instead of adding them")
@pass_ctx
def bulk(c: Ctx, codes: str, market: str, channel: str | None, remove: bool) -> None:
    """Add (or --remove) comma-separated CODES on MARKET; all are validated before any write."""
    do_change(c, codes, market, channel, add=not remove)


def show_subs(c: Ctx, as_json: bool) -> None:
    from cli.ops import subscriptions
    from ingestor.ticks import ms_to_clock

    with c.redis() as r:
        rows = subscriptions(r, c.keys)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no subscriptions desired (toss-ctl subscribe A005930 kr)")
    for row in rows:
        since = ms_to_clock(row["since_ms"]) if row["since_ms"] else "-"
        err = f"  {row['error']}" if row["error"] else ""
        click.echo(f"{row['member']:<32} {row['state']:<8} since {since} UTC{err}")


@main.command()
@json_option
@pass_ctx
def subs(c: Ctx, as_json: bool) -> None:
    """Desired subscriptions with their live state."""
    show_subs(c, as_json)


def show_health(c: Ctx, as_json: bool) -> int:
    from cli.ops import health

    with c.redis() as r:
        ok, rows = health(r, c.keys, c.settings.health_interval_s)
    if as_json:
        emit_json({"ok": ok, "processes": rows})
    else:
        if not rows:
            click.echo("no heartbeats (nothing running?)")
        for row in rows:
            mark = "ok  " if row["ok"] else "FAIL"
            click.echo(f"{mark} {row['key']}: {row['reason']}")
    return EXIT_OK if ok and rows else EXIT_UNHEALTHY


@main.command()
@json_option
@pass_ctx
def health(c: Ctx, as_json: bool) -> None:
    """Every heartbeat (ingestors, consumers); exit 1 when any is stale, missing or down."""
    sys.exit(show_health(c, as_json))


def show_status(c: Ctx, as_json: bool) -> None:
    from cli.ops import status

    with c.redis() as r:
        st = status(r, c.keys, c.settings.health_interval_s)
    if as_json:
        emit_json(st)
        return
    echo = click.echo
    echo("ingestors:")
    for i in st["ingestors"] or [{"name": "(none running)"}]:
        if "status" not in i:
            echo(f"  {i['name']}")
            continue
        echo(
            f"  {i['name']}: {i['status']}{' (' + i['reason'] + ')' if i['reason'] else ''}, "
            f"{i['ticks_per_s']} ticks/s, {i['ticks_total']} total, "
            f"{i['reconnects']} reconnects, queue {i['queue_depth']}, rss {i['rss_mb']} MB"
        )
    sub = st["subscriptions"]
    rest = ", ".join(f"{k} {v}" for k, v in sub.items() if k != "desired")
    echo(f"subscriptions: desired {sub['desired']}" + (f", {rest}" if rest else ""))
    echo("streams:")
    for s in st["streams"] or [{"stream": "(none yet)"}]:
        if "length" not in s:
            echo(f"  {s['stream']}")
            continue
        age = f", newest {s['newest_age_s']} s ago" if s["newest_age_s"] is not None else ""
        echo(f"  {s['stream']}: {s['length']} entries{age}")
    echo("consumer groups:")
    for g in st["groups"] or [{"stream": "(none)"}]:
        if "group" not in g:
            echo(f"  {g['stream']}")
            continue
        echo(
            f"  {g['stream']} {g['group']}: {g['consumers']} consumers, "
            f"{g['pending']} pending, lag {g['lag']}"
        )
    for w in st["consumers"]:
        echo(
            f"  worker {w['group']}/{w['name']}: {'ok' if w['ok'] else 'UNHEALTHY'}, "
            f"{w['processed_per_s']}/s, {w['errors']} errors"
        )


@main.command()
@json_option
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """One screen: ingestors, subscriptions, streams, consumer groups, dead letters."""
    show_status(c, as_json)


@main.command()
@json_option
@pass_ctx
def streams(c: Ctx, as_json: bool) -> None:
    """Per stream: length, newest entry; per group: consumers, pending, lag."""
    from cli.ops import groups
    from cli.ops import streams as stream_rows

    with c.redis() as r:
        rows, grps = stream_rows(r, c.keys), groups(r, c.keys)
    if as_json:
        emit_json({"streams": rows, "groups": grps})
        return
    for s in rows:
        click.echo(
            f"{s['stream']}: length {s['length']}, last id {s['last_id']}, "
            f"newest {s['newest_age_s']} s ago, {s['groups']} groups"
        )
    for g in grps:
        click.echo(
            f"  group {g['group']} on {g['stream']}: {g['consumers']} consumers, "
            f"pending {g['pending']}, lag {g['lag']}, last delivered {g['last_delivered']}"
        )


@main.command()
@click.argument("market")
@click.option("--code", default=None, help="only this code (gap entries always shown)")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--follow", "-f", is_flag=True, help="keep printing new ticks (Ctrl-C stops)")
@json_option
@pass_ctx
def tail(c: Ctx, market: str, code: str | None, count: int, follow: bool, as_json: bool) -> None:
    """The newest ticks of MARKET as readable lines."""
    from cli.ops import tail as tail_rows
    from ingestor.keys import MARKETS
    from ingestor.ticks import format_entry

    m = market.strip().lower()
    if m not in MARKETS:
        die(f"unknown market {market!r}: use {', '.join(MARKETS)}", EXIT_USAGE)
    code = code.strip().upper() if code else None
    with c.redis() as r:
        rows = tail_rows(r, c.keys, m, count, code)
        if as_json:
            emit_json(
                [
                    {"id": eid, **{k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}}
                    for eid, f in rows
                ]
            )
            return
        for eid, fields in rows:
            click.echo(format_entry(m, eid, fields))
        if not follow:
            return
        last = rows[-1][0] if rows else "$"
        try:
            while True:
                resp: Any = r.xread({c.keys.ticks(m): last}, block=1000, count=500)
                for _, entries in resp or []:
                    for eid, fields in entries:
                        last = eid
                        if (
                            code is None
                            or fields.get(b"code") == code.encode()
                            or (fields.get(b"channel") == b"gap")
                        ):
                            click.echo(format_entry(m, eid, fields))
        except KeyboardInterrupt:
            return


@main.command()
@pass_ctx
def acl(c: Ctx) -> None:
    """Print minimal ACL SETUSER commands for the ingestor, toss-ctl and workers."""
    from ingestor.acl import setuser_commands

    for line in setuser_commands(c.settings.key_prefix):
        click.echo(line)


@main.command()
@pass_ctx
def shell(c: Ctx) -> None:
    """Interactive mode: sub, unsub, bulk, status, subs, health, help, quit."""
    from cli.shell import Shell

    Shell(c).cmdloop()


def run_quietly(fn: Callable[[], Any]) -> int:
    """Run a command body, turning its exit into a return code (used by the shell)."""
    try:
        result = fn()
    except SystemExit as exc:
        return int(exc.code or 0)
    return int(result or 0)


if __name__ == "__main__":
    main()
