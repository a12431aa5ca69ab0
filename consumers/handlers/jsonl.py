"""``jsonl``: append ticks to ``<dir>/<market>/<YYYY-MM-DD>.jsonl`` (UTC day of receipt), one JSON
object per line with the stream id and the verbatim payload; flushed per batch. Replayable: each
line holds everything the stream entry held. Directory: ``TOSS_JSONL_DIR`` (default ``archive``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from consumers.tick import Tick


class JsonlHandler:
    ignores_gaps = False

    def __init__(self, ctx: Any) -> None:
        self.root = Path(os.environ.get("TOSS_JSONL_DIR", "archive"))
        self._files: dict[Path, IO[bytes]] = {}

    def _file(self, market: str, recv_ms: int) -> IO[bytes]:
        day = datetime.fromtimestamp(recv_ms / 1000, UTC).strftime("%Y-%m-%d")
        path = self.root / market / f"{day}.jsonl"
        f = self._files.get(path)
        if f is None:
            for old in self._files.values():
                old.close()
            self._files.clear()
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._files[path] = path.open("ab")
        return f

    def __call__(self, ticks: list[Tick]) -> None:
        for t in ticks:
            f = self._file(t.market, t.recv_ms or 0)
            line: dict[str, Any] = {
                "id": t.stream_id,
                "market": t.market,
                **{k.decode(): v.decode() for k, v in t.fields.items() if k != b"payload"},
            }
            if t.raw:
                line["payload"] = orjson.Fragment(t.raw)
            f.write(orjson.dumps(line) + b"\n")
        for f in self._files.values():
            f.flush()
