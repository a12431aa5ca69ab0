"""Realistic Toss web feed payloads for the simulator (pure: no I/O, seeded randomness).

Trades walk prices on the exchange's tick grid, alternate BUY/SELL, and keep ``cumulativeVolume``
strictly increasing per code, as the real feed does within a session.
"""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from ingestor.subs import Sub

KST = timezone(timedelta(hours=9))
FX_KRW_PER_USD = 1392.89


def kr_tick_size(price: float) -> int:
    for bound, tick in (
        (2000, 1),
        (5000, 5),
        (20000, 10),
        (50000, 50),
        (200000, 100),
        (500000, 500),
    ):
        if price < bound:
            return tick
    return 1000


class TickGen:
    """Payload generator for one subscription."""

    __slots__ = ("base", "cum_amount", "cum_volume", "high", "low", "open", "price", "rng", "sub")

    def __init__(self, sub: Sub, seed: int | None = None) -> None:
        self.sub = sub
        self.rng = random.Random(seed if seed is not None else zlib.crc32(sub.member.encode()))
        start = {
            ("kr", "trade"): 70000.0,
            ("kr", "bidoffer"): 70000.0,
            ("us", "trade"): 180.0,
            ("us", "bidoffer"): 180.0,
            ("kr", "index"): 2650.0,
            ("us", "index"): 17000.0,
            ("crypto", "vwap"): 95_000_000.0,
        }[(sub.market, sub.channel)]
        self.price = self.base = self.open = self.high = self.low = start
        self.cum_volume = self.rng.randint(1000, 100_000)
        self.cum_amount = self.cum_volume * start

    def _step(self) -> float:
        r = self.rng
        if self.sub.market == "kr" and self.sub.channel != "index":
            tick = kr_tick_size(self.price)
            self.price = max(tick, self.price + tick * r.choice((-2, -1, -1, 0, 1, 1, 2)))
        elif self.sub.market == "us" and self.sub.channel != "index":
            self.price = max(0.01, round(self.price + 0.01 * r.choice((-3, -1, 0, 1, 3)), 2))
        else:
            self.price = round(self.price * (1 + r.gauss(0, 0.0002)), 2)
        self.high = max(self.high, self.price)
        self.low = min(self.low, self.price)
        return self.price

    def _change(self) -> str:
        return "UP" if self.price > self.base else "DOWN" if self.price < self.base else "FLAT"

    def next(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        price = self._step()
        volume = self.rng.randint(1, 500)
        self.cum_volume += volume
        self.cum_amount += volume * price
        sub = self.sub
        if sub.channel == "bidoffer":
            return self._bidoffer(now)
        body: dict[str, Any] = {"code": sub.code}
        if sub.market == "kr":
            body["dt"] = now.astimezone(KST).isoformat(timespec="milliseconds")
        else:
            body["dt"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body.update(
            changeType=self._change(),
            base=self.base,
            close=price,
            cumulativeVolume=self.cum_volume,
            cumulativeAmount=round(self.cum_amount, 2),
        )
        if sub.channel == "trade":
            body.update(
                session="DAY",
                currency="KRW" if sub.market == "kr" else "USD",
                volume=volume,
                tradeType=self.rng.choice(("BUY", "SELL")),
                tradingStrength=round(self.rng.uniform(50, 200), 2),
                open=self.open,
                high=self.high,
                low=self.low,
            )
            if sub.market == "kr":
                body["exchange"] = "KRX"
            else:
                body.update(
                    baseKrw=round(self.base * FX_KRW_PER_USD, 3),
                    closeKrw=round(price * FX_KRW_PER_USD, 3),
                    cumulativeAmountKrw=round(self.cum_amount * FX_KRW_PER_USD, 1),
                )
        elif sub.channel == "index" and sub.market == "us":
            body["volume"] = volume
        elif sub.channel == "vwap":
            body["currency"] = "KRW"
        return body

    def _bidoffer(self, now: datetime) -> dict[str, Any]:
        tick = kr_tick_size(self.price) if self.sub.market == "kr" else 0.01
        offers = [round(self.price + tick * (i + 1), 2) for i in range(10)]
        bids = [round(self.price - tick * i, 2) for i in range(10)]
        return {
            "code": self.sub.code,
            "dt": now.isoformat(timespec="milliseconds"),
            "close": self.price,
            "offerPrices": offers,
            "offerVolumes": [self.rng.randint(1, 5000) for _ in offers],
            "bidPrices": bids,
            "bidVolumes": [self.rng.randint(1, 5000) for _ in bids],
            "offerVolume": self.rng.randint(10_000, 90_000),
            "bidVolume": self.rng.randint(10_000, 90_000),
        }

    def next_bytes(self) -> tuple[bytes, int]:
        """(JSON body, cumulativeVolume)."""
        body = self.next()
        return orjson.dumps(body), self.cum_volume
