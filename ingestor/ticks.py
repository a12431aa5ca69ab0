"""Reading stream entries back: one readable line per tick (used by ``toss-ctl tail``, the
``print`` handler and the demo)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson


def as_str(v: Any) -> str:
    """A Redis reply value as text (bytes decoded, anything else ``str()``)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "" if v is None else str(v)


def ms_to_clock(ms: int | str) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def format_entry(market: str, entry_id: Any, fields: Mapping[Any, Any]) -> str:
    """``12:00:01.250 kr trade A005930  70100 x 12 BUY`` or a visible gap line."""
    f = {as_str(k): v for k, v in fields.items()}
    channel = as_str(f.get("channel", "?"))
    if channel == "gap":
        return (
            f"---- GAP {market}: {ms_to_clock(as_str(f.get('from_ms', 0)))} -> "
            f"{ms_to_clock(as_str(f.get('to_ms', 0)))} ({as_str(f.get('reason', ''))}) ----"
        )
    when = ms_to_clock(as_str(f.get("recv_ms", 0)))
    code = as_str(f.get("code", "?"))
    try:
        p = orjson.loads(f.get("payload", b"{}"))
    except orjson.JSONDecodeError:
        p = {}
    if not isinstance(p, dict):
        p = {}
    price = _num(p.get("close"))
    parts = [when, market, f"{channel:<8}", f"{code:<14}", f"{price:>12}"]
    if "volume" in p:
        parts.append(f"x {_num(p.get('volume'))}")
    if "tradeType" in p:
        parts.append(as_str(p["tradeType"]))
    elif "changeType" in p:
        parts.append(as_str(p["changeType"]))
    return " ".join(parts)
