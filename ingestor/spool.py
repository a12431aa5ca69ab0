"""Append-only disk spool for entries that cannot go to Redis yet (sans asyncio: plain file I/O,
called from a worker thread by the publisher).

Layout: ``<dir>/<12-digit number>.spool`` segments, replayed in number order, each a file of JSON
lines ``[key, maxlen, id_or_null, {field: value}]``; ``<segment>.pos`` holds how far a segment has
been replayed (rewritten atomically after each batch), so a restart neither loses nor repeats
entries. A torn last line (crash while writing) is skipped and counted.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingestor.errors import IngestError


class SpoolError(IngestError):
    """The spool directory cannot be used (one line, for the user)."""


FIRST_SEGMENT = 1_000_000  # room below for segments written in front of older ones at shutdown


@dataclass(slots=True)
class Record:
    key: str
    maxlen: int
    id: str | None
    fields: dict[str, Any]


def encode(key: str, maxlen: int, entry_id: str | None, fields: dict[Any, Any]) -> bytes:
    plain = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return orjson.dumps([key, maxlen, entry_id, plain]) + b"\n"


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.torn = 0
        self.lock = threading.Lock()  # appends and reads come from worker threads
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot use spool directory {self.dir}: {exc.strerror or exc} "
                "(set TOSS_SPOOL_DIR, or TOSS_SPOOL_MAX_MB=0 for no spool)"
            ) from None

    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.spool"))

    def size(self) -> int:
        with self.lock:
            return self._size()

    def _size(self) -> int:
        total = 0
        for seg in self.segments():
            total += seg.stat().st_size - self._pos(seg)
        return total

    def _pos(self, seg: Path) -> int:
        try:
            return int(seg.with_suffix(".pos").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def append(self, data: bytes, front: bool = False) -> None:
        """Append encoded records to the newest segment (or a new segment before all others)."""
        with self.lock:
            self._append(data, front)

    def _append(self, data: bytes, front: bool) -> None:
        segs = self.segments()
        if front and segs:
            path = self.dir / f"{int(segs[0].stem) - 1:012d}.spool"
        elif segs:
            path = segs[-1]
        else:
            path = self.dir / f"{FIRST_SEGMENT:012d}.spool"
        with path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read(self, max_records: int) -> tuple[Path | None, list[Record], int]:
        """The next records of the oldest segment: (segment, records, position after them)."""
        with self.lock:
            return self._read(max_records)

    def _read(self, max_records: int) -> tuple[Path | None, list[Record], int]:
        segs = self.segments()
        if not segs:
            return None, [], 0
        seg = segs[0]
        pos = self._pos(seg)
        out: list[Record] = []
        with seg.open("rb") as f:
            f.seek(pos)
            while len(out) < max_records:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    # torn write at the end of a segment: skip it for good
                    self.torn += 1
                    pos += len(line)
                    break
                pos += len(line)
                try:
                    key, maxlen, entry_id, fields = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError):
                    self.torn += 1
                    continue
                out.append(Record(key, maxlen, entry_id, fields))
        return seg, out, pos

    def commit(self, seg: Path, pos: int) -> None:
        """Records up to ``pos`` are in Redis: remember it, or drop the finished segment."""
        with self.lock:
            self._commit(seg, pos)

    def _commit(self, seg: Path, pos: int) -> None:
        if pos >= seg.stat().st_size and seg != self.segments()[-1]:
            self._remove(seg)
            return
        tmp = seg.with_suffix(".pos.tmp")
        tmp.write_text(str(pos))
        os.replace(tmp, seg.with_suffix(".pos"))

    def finish_if_drained(self) -> bool:
        """Remove the spool when every segment has been replayed; True when it is empty."""
        with self.lock:
            return self._finish_if_drained()

    def _finish_if_drained(self) -> bool:
        segs = self.segments()
        if any(seg.stat().st_size > self._pos(seg) for seg in segs):
            return False
        for seg in segs:
            self._remove(seg)
        return True

    def _remove(self, seg: Path) -> None:
        seg.unlink(missing_ok=True)
        seg.with_suffix(".pos").unlink(missing_ok=True)
