"""Every Redis key name toss-ingest uses. Grep a key and you land here.

| key | type | what |
| --- | --- | --- |
| {p}:subs | SET | desired subscriptions, ``market:channel:code`` |
| {p}:subs:state | HASH | member -> JSON {state, since_ms, error} |
| {p}:control | PUBSUB | nudge: the desired set changed |
| {p}:ticks:{market} | STREAM | one entry per tick, plus ``gap`` entries |
| {p}:invalid | STREAM | frames the ingestor could not use, with reason |
| {p}:dead:{market} | STREAM | entries a consumer group gave up on |
| {p}:health:ingestor:{name} | HASH | ingestor heartbeat (TTL) |
| {p}:health:consumer:{group}:{name} | HASH | consumer heartbeat (TTL) |
| {p}:latest:{market} | HASH | ``latest`` handler: code -> newest tick JSON |
| {p}:bars:{market} | STREAM | ``bars`` handler: closed 1-minute OHLCV bars |
"""

from __future__ import annotations

from dataclasses import dataclass

MARKETS = ("kr", "us", "crypto")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "toss"

    @property
    def subs(self) -> str:
        return f"{self.prefix}:subs"

    @property
    def subs_state(self) -> str:
        return f"{self.prefix}:subs:state"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def invalid(self) -> str:
        return f"{self.prefix}:invalid"

    def ticks(self, market: str) -> str:
        return f"{self.prefix}:ticks:{market}"

    def is_ticks(self, key: str) -> bool:
        return key.startswith(f"{self.prefix}:ticks:")

    def dead(self, market: str) -> str:
        return f"{self.prefix}:dead:{market}"

    def latest(self, market: str) -> str:
        return f"{self.prefix}:latest:{market}"

    def latest_recv_ms(self, market: str) -> str:
        return f"{self.prefix}:latest:{market}:recv_ms"

    def bars(self, market: str) -> str:
        return f"{self.prefix}:bars:{market}"

    def health_ingestor(self, name: str) -> str:
        return f"{self.prefix}:health:ingestor:{name}"

    def health_consumer(self, group: str, name: str) -> str:
        return f"{self.prefix}:health:consumer:{group}:{name}"

    @property
    def health_pattern(self) -> str:
        return f"{self.prefix}:health:*"
