"""The Toss web feed (tossinvest.com's browser feed): every quirk of this vendor lives here.

- guest key bootstrap over HTTP (``{"result": "<key>"}``), fresh for every connection
- CONNECT headers: ``device-id`` (``WTS-`` + 32 hex, one per process), ``connection-id`` (uuid4 per
  connection), ``authorization`` (the guest key), ``platform``
- destinations from configurable templates (the ``v1`` segment may change)
- which codes fit which market and channel, and the advice for US tickers such as ``AAPL``
- reading the event time (``dt``) out of a MESSAGE body

The guest key and device id are credentials: they are kept in memory and never logged.
"""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from ingestor.errors import AccessDenied, FeedError, InvalidSymbol
from ingestor.settings import Settings
from ingestor.stomp import Frame
from ingestor.subs import Sub

NAME = "toss-web"
SUBPROTOCOLS: tuple[str, ...] = ("v12.stomp",)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) toss-ingest"

CHANNELS: Mapping[str, tuple[str, ...]] = {
    "kr": ("trade", "index", "bidoffer"),
    "us": ("trade", "index", "bidoffer"),
    "crypto": ("vwap",),
}
DEFAULT_CHANNEL = {"kr": "trade", "us": "trade", "crypto": "vwap"}
INDEX_CODES = {
    "kr": ("KGG01P", "QGG01P"),
    "us": ("COMP.NAI", "SPX.CBI", "RGI..VIX", "SOX.NAI"),
}
CRYPTO_CODES = ("VWAP.KRW-BTC", "VWAP.KRW-ETH", "VWAP.KRW-XRP", "VWAP.KRW-SOL")
_KR_STOCK = re.compile(r"A[0-9A-Z]{6}")
_US_STOCK = re.compile(r"US\d{11}|(?:NAS|NYS|AMX)[0-9A-Z]{4,16}")
_US_TICKER = re.compile(r"[A-Z][A-Z.\-]{0,5}")
CODE_LOOKUP_URL = "https://wts-info-api.tossinvest.com/api/v2/stock-infos/code-or-symbol/{ticker}"


def normalise(market: str, code: str, channel: str | None = None) -> Sub:
    """Validate and normalise one subscription; raise ``InvalidSymbol`` with advice."""
    m = market.strip().lower()
    if m not in CHANNELS:
        raise InvalidSymbol(f"unknown market {market.strip()!r}: use kr, us or crypto")
    c = code.strip().upper()
    if not c:
        raise InvalidSymbol("empty code")
    ch = channel.strip().lower() if channel else None
    if ch is None:
        ch = "index" if c in INDEX_CODES.get(m, ()) else DEFAULT_CHANNEL[m]
    if ch not in CHANNELS[m]:
        raise InvalidSymbol(
            f"channel {ch!r} does not exist for market {m}: use {', '.join(CHANNELS[m])}"
        )
    if ch == "index":
        if c not in INDEX_CODES[m]:
            raise InvalidSymbol(f"{c} is not a known {m} index: use {', '.join(INDEX_CODES[m])}")
    elif ch == "vwap":
        if c not in CRYPTO_CODES:
            raise InvalidSymbol(f"{c} is not a known crypto code: use {', '.join(CRYPTO_CODES)}")
    elif m == "kr":
        if not _KR_STOCK.fullmatch(c):
            bare = re.fullmatch(r"[0-9A-Z]{6}", c) and not c.startswith("A")
            hint = f" (did you mean A{c}?)" if bare else ""
            raise InvalidSymbol(
                f"{c} is not a KR stock code: 'A' + 6 characters, e.g. A005930{hint}"
            )
    elif not _US_STOCK.fullmatch(c):
        if _US_TICKER.fullmatch(c):
            raise InvalidSymbol(
                f"{c} looks like a ticker, but the feed needs a Toss product code "
                "(US + 11 digits, e.g. US20100311002, or NAS/NYS/AMX...); look it up at "
                + CODE_LOOKUP_URL.format(ticker=c)
                + " (result.code)"
            )
        raise InvalidSymbol(
            f"{c} is not a US stock code: US + 11 digits (e.g. US20100311002) or NAS/NYS/AMX..."
        )
    return Sub(m, ch, c)


def parse_member(member: str) -> Sub:
    """``kr:trade:A005930`` -> Sub; the member must already be in normal form."""
    parts = member.split(":")
    if len(parts) != 3:
        raise InvalidSymbol(f"member {member[:60]!r} is not market:channel:code")
    sub = normalise(parts[0], parts[2], parts[1])
    if sub.member != member:
        raise InvalidSymbol(f"member {member[:60]!r} is not in normal form ({sub.member})")
    return sub


def event_time(payload: Any) -> str:
    """The event time of a decoded MESSAGE body ('' when absent)."""
    if isinstance(payload, dict):
        dt = payload.get("dt")
        if isinstance(dt, str):
            return dt
    return ""


class TossWebSource:
    """Connection recipe for the Toss web feed (used by the generic STOMP driver)."""

    name = NAME
    subprotocols = SUBPROTOCOLS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._device_id = "WTS-" + uuid.uuid4().hex  # one per process; a credential

    @property
    def ws_url(self) -> str:
        return self.settings.websocket_url

    @property
    def ws_headers(self) -> dict[str, str]:
        return {"User-Agent": USER_AGENT}

    @property
    def origin(self) -> str:
        return self.settings.origin

    def destination(self, sub: Sub) -> str:
        template = (
            self.settings.crypto_destination
            if sub.market == "crypto"
            else self.settings.stock_destination
        )
        return template.format(market=sub.market, channel=sub.channel, code=sub.code)

    normalise = staticmethod(normalise)
    parse_member = staticmethod(parse_member)
    event_time = staticmethod(event_time)

    async def connect_frame(self, heartbeat_ms: int) -> Frame:
        """The CONNECT frame for a new connection: fresh guest key and connection id."""
        key = await fetch_guest_key(
            self.settings.guest_key_url, self.settings.origin, self.settings.connect_timeout_s
        )
        headers = [
            ("accept-version", "1.2"),
            ("host", self.settings.stomp_host),
            ("heart-beat", f"{heartbeat_ms},{heartbeat_ms}"),
            ("device-id", self._device_id),
            ("connection-id", str(uuid.uuid4())),
        ]
        if key is not None:
            headers.append(("authorization", key))
        headers.append(("platform", "Web/wts"))
        return Frame("CONNECT", headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch_guest_key(url: str, origin: str, timeout_s: float) -> str:
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        url,
        headers={
            "Origin": origin,
            "Referer": origin + "/",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        },
    )
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            body = resp.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise AccessDenied(f"guest key refused: HTTP {exc.code}") from None
        if 300 <= exc.code < 400:
            raise AccessDenied(f"guest key request redirected (HTTP {exc.code}), login?") from None
        raise FeedError(f"guest key request failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FeedError(f"guest key request failed: {reason}") from None
    try:
        result = orjson.loads(body)["result"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise FeedError("guest key response is not {'result': ...}") from None
    if not isinstance(result, str) or not result:
        raise FeedError("guest key response has no key")
    return result


async def fetch_guest_key(url: str, origin: str, timeout_s: float) -> str | None:
    """Fetch a guest key without blocking the loop; ``None`` when the URL is empty."""
    if not url:
        return None
    return await asyncio.to_thread(_fetch_guest_key, url, origin, timeout_s)
