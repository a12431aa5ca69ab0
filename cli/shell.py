"""``toss-ctl shell``: the original project's interactive commands, with history and line
editing (readline), the same validation and output as the ``toss-ctl`` commands."""

from __future__ import annotations

import cmd
import contextlib
import os
import shlex
from pathlib import Path
from typing import Any

import click

from cli.main import Ctx, do_change, run_quietly, show_health, show_status, show_subs

HISTORY = Path(os.environ.get("TOSS_CTL_HISTORY", Path.home() / ".toss_ctl_history"))


class Shell(cmd.Cmd):
    intro = (
        "toss-ctl shell: sub CODE MARKET, unsub CODE MARKET, bulk CODES MARKET, status, subs, "
        "health, help, quit"
    )
    prompt = "toss> "

    def __init__(self, c: Ctx) -> None:
        super().__init__()
        self.c = c
        self._readline: Any = None
        with contextlib.suppress(ImportError, OSError):
            import readline

            self._readline = readline
            if HISTORY.exists():
                readline.read_history_file(HISTORY)

    def _args(self, line: str, n: int, usage: str) -> list[str] | None:
        try:
            parts = shlex.split(line)
        except ValueError as exc:
            click.echo(f"error: {exc}")
            return None
        if len(parts) < n or len(parts) > n + 1:
            click.echo(f"usage: {usage}")
            return None
        return parts

    def _change(self, line: str, usage: str, add: bool) -> None:
        parts = self._args(line, 2, usage)
        if parts:
            channel = parts[2] if len(parts) > 2 else None
            run_quietly(lambda: do_change(self.c, parts[0], parts[1], channel, add))

    def do_sub(self, line: str) -> None:
        """sub CODE MARKET [CHANNEL]: subscribe, e.g. sub A005930 kr"""
        self._change(line, "sub CODE MARKET [CHANNEL]", add=True)

    def do_unsub(self, line: str) -> None:
        """unsub CODE MARKET [CHANNEL]: unsubscribe"""
        self._change(line, "unsub CODE MARKET [CHANNEL]", add=False)

    def do_bulk(self, line: str) -> None:
        """bulk CODE,CODE,... MARKET [CHANNEL]: subscribe several"""
        self._change(line, "bulk CODE,CODE,... MARKET [CHANNEL]", add=True)

    def do_status(self, line: str) -> None:
        """status: one screen of everything"""
        run_quietly(lambda: show_status(self.c, False))

    def do_subs(self, line: str) -> None:
        """subs: desired subscriptions and their state"""
        run_quietly(lambda: show_subs(self.c, False))

    def do_health(self, line: str) -> None:
        """health: heartbeats and their verdicts"""
        run_quietly(lambda: show_health(self.c, False))

    def do_quit(self, line: str) -> bool:
        """quit: leave the shell"""
        return True

    do_exit = do_quit

    def do_EOF(self, line: str) -> bool:
        click.echo()
        return True

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> None:
        click.echo(f"unknown command {line.split()[0]!r}: type help")

    def postloop(self) -> None:
        if self._readline is not None:
            with contextlib.suppress(OSError):
                self._readline.write_history_file(HISTORY)
