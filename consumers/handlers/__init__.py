"""Handlers: built-ins in an explicit registry (one file each), or ``package.module:function``.

A handler is called with a batch (``list[Tick]``); it may be sync (run in a thread) or async. An
exception leaves the whole batch pending, to be retried and finally dead-lettered. A handler that
sets ``ignores_gaps = True`` never sees gap entries (they are acked all the same).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from consumers.tick import Tick
from ingestor.keys import Keys
from ingestor.settings import Settings


class HandlerError(Exception):
    """The handler name or path cannot be resolved (one line, for the user)."""


class Context:
    """What a built-in handler may use: settings, key names and an async Redis client."""

    def __init__(self, settings: Settings, redis: Any) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis


class Handler(Protocol):
    ignores_gaps: bool

    def __call__(self, ticks: list[Tick]) -> Awaitable[None] | None: ...


BatchFn = Callable[[list[Tick]], Any]


def per_tick(fn: Callable[[Tick], Any]) -> BatchFn:
    """Decorator: turn a function of one tick into a batch handler (sync or async)."""
    if inspect.iscoroutinefunction(fn):

        async def run_async(ticks: list[Tick]) -> None:
            for t in ticks:
                await fn(t)

        return run_async

    def run(ticks: list[Tick]) -> None:
        for t in ticks:
            fn(t)

    return run


def _builtin(name: str, ctx: Context) -> Any:
    from consumers.handlers import bars, jsonl, latest, printer

    registry: dict[str, Callable[[Context], Any]] = {
        "print": printer.PrintHandler,
        "jsonl": jsonl.JsonlHandler,
        "latest": latest.LatestHandler,
        "bars": bars.BarsHandler,
        "noop": lambda _ctx: _noop,
    }
    if name not in registry:
        raise HandlerError(
            f"unknown handler {name!r}: use {', '.join(sorted(registry))} "
            "or package.module:function"
        )
    return registry[name](ctx)


async def _noop(ticks: list[Tick]) -> None:
    return None


BUILTINS = ("print", "jsonl", "latest", "bars", "noop")


def resolve(spec: str | BatchFn, ctx: Context) -> Any:
    """A built-in name, ``package.module:function``, or a callable."""
    if callable(spec):
        return spec
    if ":" not in spec:
        return _builtin(spec, ctx)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"cannot import handler module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise HandlerError(f"{module_name!r} has no callable {attr!r}")
    return fn
