"""Gap entries: the windows in which a stream may be missing ticks, and the file that carries an
open window across an ingestor restart (so the restart shows up as one gap)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("toss.gaps")

OpenGap = tuple[int, str, set[str]]  # (from_ms, reason, markets)


def gap_fields(from_ms: int, to_ms: int, reason: str) -> dict[str, Any]:
    """A gap entry: the window in which this stream may be missing ticks, and why."""
    return {
        "channel": "gap",
        "code": "",
        "dt": "",
        "recv_ms": to_ms,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "reason": reason,
    }


class OpenGapFile:
    """``<spool dir>/open-gap.json``: written at shutdown while subscribed, closed (as gap
    entries) and removed once the next run is subscribed again."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "open-gap.json"

    async def load(self) -> OpenGap | None:
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
            data = orjson.loads(raw)
            return int(data["from_ms"]), str(data["reason"]), set(data["markets"])
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring unreadable %s", self.path)
            return None

    async def save(self, gap: OpenGap) -> None:
        from_ms, reason, markets = gap
        data = orjson.dumps({"from_ms": from_ms, "reason": reason, "markets": sorted(markets)})

        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)

        await asyncio.to_thread(write)

    async def remove(self) -> None:
        await asyncio.to_thread(self.path.unlink, missing_ok=True)
