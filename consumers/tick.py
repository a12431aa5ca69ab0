"""Ticks as handlers see them: typed fields, the verbatim JSON payload parsed only when asked."""

from __future__ import annotations

from typing import Any

import orjson


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Tick:
    """One stream entry. ``kind`` is ``"tick"`` or ``"gap"`` (a window the feed could not see)."""

    __slots__ = (
        "_data",
        "channel",
        "code",
        "dt",
        "fields",
        "market",
        "raw",
        "recv_ms",
        "stream_id",
    )

    def __init__(self, market: str, stream_id: str, fields: dict[bytes, bytes]) -> None:
        self.market = market
        self.stream_id = stream_id
        self.fields = fields
        self.channel = _s(fields.get(b"channel", b""))
        self.code = _s(fields.get(b"code", b""))
        self.dt = _s(fields.get(b"dt", b""))
        self.recv_ms = int(fields.get(b"recv_ms", b"0") or 0)
        self.raw: bytes = fields.get(b"payload", b"")
        self._data: Any = None

    @property
    def kind(self) -> str:
        return "gap" if self.channel == "gap" else "tick"

    @property
    def is_gap(self) -> bool:
        return self.channel == "gap"

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a dict (parsed once, on first use)."""
        if self._data is None:
            parsed = orjson.loads(self.raw) if self.raw else {}
            self._data = parsed if isinstance(parsed, dict) else {"value": parsed}
        return self._data  # type: ignore[no-any-return]

    @property
    def gap_window_ms(self) -> tuple[int, int]:
        return int(self.fields.get(b"from_ms", 0)), int(self.fields.get(b"to_ms", 0))

    def __repr__(self) -> str:
        return f"Tick({self.market}:{self.channel}:{self.code} @{self.stream_id})"
