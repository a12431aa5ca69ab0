"""Ticks as handlers see them: typed fields, decoded on first use; the verbatim JSON payload is
parsed only when ``data`` is asked for."""

from __future__ import annotations

from typing import Any

import orjson

from ingestor.ticks import as_str


class Tick:
    """One stream entry. ``kind`` is ``"tick"`` or ``"gap"`` (a window the feed could not see)."""

    __slots__ = ("_data", "_fields", "_id", "market")

    def __init__(
        self, market: str, stream_id: bytes | str, fields: dict[bytes, bytes] | list[bytes]
    ) -> None:
        """``fields``: a dict, or Redis's flat ``[field, value, ...]`` reply (made a dict on first
        use, so a handler that never looks inside an entry never pays for it)."""
        self.market = market
        self._id = stream_id
        self._fields = fields
        self._data: Any = None

    @property
    def fields(self) -> dict[bytes, bytes]:
        f = self._fields
        if isinstance(f, list):
            f = self._fields = dict(zip(f[::2], f[1::2], strict=True))
        return f

    @property
    def stream_id(self) -> str:
        return as_str(self._id)

    @property
    def id_bytes(self) -> bytes:
        return self._id if isinstance(self._id, bytes) else self._id.encode()

    @property
    def channel(self) -> str:
        return as_str(self.fields.get(b"channel", b""))

    @property
    def code(self) -> str:
        return as_str(self.fields.get(b"code", b""))

    @property
    def dt(self) -> str:
        return as_str(self.fields.get(b"dt", b""))

    @property
    def recv_ms(self) -> int:
        return int(self.fields.get(b"recv_ms", b"0") or 0)

    @property
    def raw(self) -> bytes:
        return self.fields.get(b"payload", b"")

    @property
    def kind(self) -> str:
        return "gap" if self.is_gap else "tick"

    @property
    def is_gap(self) -> bool:
        f = self._fields
        if isinstance(f, list) and f[:1] == [b"channel"]:  # the ingestor writes channel first
            return f[1] == b"gap"
        return self.fields.get(b"channel") == b"gap"

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a dict (parsed once, on first use)."""
        if self._data is None:
            raw = self.raw
            parsed = orjson.loads(raw) if raw else {}
            self._data = parsed if isinstance(parsed, dict) else {"value": parsed}
        return self._data  # type: ignore[no-any-return]

    @property
    def gap_window_ms(self) -> tuple[int, int]:
        return int(self.fields.get(b"from_ms", 0)), int(self.fields.get(b"to_ms", 0))

    def __repr__(self) -> str:
        return f"Tick({self.market}:{self.channel}:{self.code} @{self.stream_id})"
