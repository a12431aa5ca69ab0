"""``latest``: the newest tick per code in ``{prefix}:latest:{market}`` (HASH code -> payload),
for dashboards and a quick ``HGET``. Newer means a larger receive time: a late or duplicate tick
never overwrites a newer one (the comparison runs in Redis, so several workers agree)."""

from __future__ import annotations

from typing import Any

from consumers.tick import Tick

# KEYS[1] latest hash, KEYS[2] its receive-time hash; ARGV: code, recv_ms, payload
_SCRIPT = """
local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[2]) >= cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 0
"""


class LatestHandler:
    ignores_gaps = True

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.script = ctx.redis.register_script(_SCRIPT)

    async def __call__(self, ticks: list[Tick]) -> None:
        newest: dict[tuple[str, str], Tick] = {}
        for t in ticks:
            newest[(t.market, t.code)] = t
        pipe = self.ctx.redis.pipeline(transaction=False)
        keys = self.ctx.keys
        for (market, code), t in newest.items():
            await self.script(
                keys=[keys.latest(market), keys.latest_recv_ms(market)],
                args=[code, t.recv_ms, t.raw],
                client=pipe,
            )
        await pipe.execute()
