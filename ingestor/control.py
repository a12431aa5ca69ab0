"""Changing the desired subscriptions from Python (the same validation as ``toss-ctl``).

subs = Subscriptions(redis, settings)
await subs.add("A005930", "kr")            # -> [("kr:trade:A005930", "added")]
await subs.bulk("A000660,A035420", "kr")
await subs.remove("A005930", "kr")
await subs.list()                          # -> [{"member", "state", "since_ms", "error"}]
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from ingestor.errors import InvalidSymbol
from ingestor.keys import Keys
from ingestor.settings import Settings
from ingestor.sources.toss_web import normalise
from ingestor.subs import Sub


def parse_codes(codes: str | list[str], market: str, channel: str | None = None) -> list[Sub]:
    """Validate every code before anything is written (raises InvalidSymbol)."""
    items = codes if isinstance(codes, list) else codes.split(",")
    out: list[Sub] = []
    for c in items:
        if c.strip():
            sub = normalise(market, c, channel)
            if sub not in out:
                out.append(sub)
    if not out:
        raise InvalidSymbol("no codes given")
    return out


def change_results(subs: list[Sub], counts: list[int], add: bool) -> list[tuple[str, str]]:
    if add:
        return [
            (s.member, "added" if n else "already present")
            for s, n in zip(subs, counts, strict=True)
        ]
    return [
        (s.member, "removed" if n else "not present") for s, n in zip(subs, counts, strict=True)
    ]


def state_rows(members: set[Any], states: dict[Any, Any]) -> list[dict[str, Any]]:
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in states.items()
    }
    rows = []
    for m in sorted(x.decode() if isinstance(x, bytes) else x for x in members):
        st = decoded.get(m, {})
        rows.append(
            {
                "member": m,
                "state": st.get("state", "unknown (no ingestor has seen it)"),
                "since_ms": st.get("since_ms", 0),
                "error": st.get("error", ""),
            }
        )
    return rows


class Subscriptions:
    """The desired set in Redis, changed with the same rules as ``toss-ctl``; the running
    ingestor follows through the control channel."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.key_prefix)

    async def _change(self, subs: list[Sub], add: bool) -> list[tuple[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        for sub in subs:
            (pipe.sadd if add else pipe.srem)(self.keys.subs, sub.member)
        counts = await pipe.execute()
        if any(counts):
            await self.redis.publish(self.keys.control, "subs")
        return change_results(subs, counts, add)

    async def add(
        self, code: str, market: str, channel: str | None = None
    ) -> list[tuple[str, str]]:
        return await self._change(parse_codes([code], market, channel), add=True)

    async def remove(
        self, code: str, market: str, channel: str | None = None
    ) -> list[tuple[str, str]]:
        return await self._change(parse_codes([code], market, channel), add=False)

    async def bulk(
        self, codes: str | list[str], market: str, channel: str | None = None, remove: bool = False
    ) -> list[tuple[str, str]]:
        return await self._change(parse_codes(codes, market, channel), add=not remove)

    async def list(self) -> list[dict[str, Any]]:
        members = await self.redis.smembers(self.keys.subs)
        states = await self.redis.hgetall(self.keys.subs_state)
        return state_rows(members, states)
