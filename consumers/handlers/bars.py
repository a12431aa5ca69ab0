"""``bars``: 1-minute OHLCV bars per code in ``{prefix}:bars:{market}`` (HASH
``code:YYYY-MM-DDTHH:MM`` -> JSON bar), minute from the tick's event time.

Correct under duplicates and late ticks because each bar is a function of the *set* of ticks in it:
open is the tick with the smallest ``cumulativeVolume``, close the largest, high/low the extremes,
and volume = last cumulativeVolume - first cumulativeVolume + first tick's volume. A duplicate
changes nothing; a late tick slots into its own minute. The update runs as one script in Redis, so
any number of workers may share a group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consumers.tick import Tick

# KEYS[1] bars hash; ARGV: field, cum, price, volume
_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local cum, price, vol = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b
if raw then b = cjson.decode(raw) else
  b = {fc = cum, o = price, fv = vol, lc = cum, c = price, h = price, l = price}
end
if cum < b.fc then b.fc = cum; b.o = price; b.fv = vol end
if cum > b.lc then b.lc = cum; b.c = price end
if price > b.h then b.h = price end
if price < b.l then b.l = price end
b.v = b.lc - b.fc + b.fv
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(b))
return 0
"""


def minute_of(t: Tick) -> str:
    if t.dt:
        try:
            return datetime.fromisoformat(t.dt.replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M")
        except ValueError:
            pass
    return datetime.fromtimestamp(t.recv_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


class BarsHandler:
    ignores_gaps = True

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.script = ctx.redis.register_script(_SCRIPT)

    async def __call__(self, ticks: list[Tick]) -> None:
        pipe = self.ctx.redis.pipeline(transaction=False)
        n = 0
        for t in ticks:
            if t.channel != "trade":
                continue
            d = t.data
            cum, price, vol = d.get("cumulativeVolume"), d.get("close"), d.get("volume", 0)
            if not isinstance(cum, int | float) or not isinstance(price, int | float):
                continue
            field = f"{t.code}:{minute_of(t)}"
            await self.script(
                keys=[self.ctx.keys.bars(t.market)], args=[field, cum, price, vol or 0], client=pipe
            )
            n += 1
        if n:
            await pipe.execute()
