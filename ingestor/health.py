"""Heartbeats in Redis: a HASH per process with a TTL, and the rules that read them.

``toss-ingest check``, ``toss-consume check`` and ``toss-ctl health`` share ``assess``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil

VERSION = "0.1.0"


def now_ms() -> int:
    return int(time.time() * 1000)


class ProcessStats:
    """CPU and RSS of this process without blocking (cpu_percent since the previous call)."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        self._cpu_at = time.monotonic()
        self._cpu = 0.0

    def sample(self) -> dict[str, str]:
        now = time.monotonic()
        if now - self._cpu_at >= 0.5:  # shorter windows give meaningless percentages
            self._cpu = self._proc.cpu_percent(None)
            self._cpu_at = now
        return {
            "cpu_percent": f"{self._cpu:.1f}",
            "rss_mb": f"{self._proc.memory_info().rss / 1048576:.1f}",
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "version": VERSION,
        }


class RateMeter:
    """Per-second rate of a growing counter between two samples."""

    def __init__(self) -> None:
        self._last_t = time.monotonic()
        self._last_v = 0

    def rate(self, value: int) -> float:
        t = time.monotonic()
        dt = max(t - self._last_t, 1e-6)
        r = (value - self._last_v) / dt
        self._last_t, self._last_v = t, value
        return r


def ttl_s(interval_s: float) -> int:
    """Heartbeat keys live about three intervals, so one missed beat is not an alarm."""
    return max(2, round(interval_s * 3))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def assess(fields: Mapping[str, str], interval_s: float, at_ms: int | None = None) -> Verdict:
    """Is the process behind this heartbeat healthy? Missing, stale or not running: no."""
    if not fields:
        return Verdict(False, "no heartbeat")
    at_ms = at_ms if at_ms is not None else now_ms()
    age_s = (at_ms - int(fields.get("updated_ms", "0"))) / 1000
    if age_s > ttl_s(interval_s):
        return Verdict(False, f"heartbeat is {age_s:.0f} s old")
    status = fields.get("status", "")
    level = fields.get("level", "healthy")
    reasons = fields.get("reasons", "")
    if fields.get("status_reason") and status != "connected" and fields.get("role") == "ingestor":
        status = f"{status}: {fields['status_reason']}"
    detail = f"{level}, {status}" + (f"; {reasons}" if reasons else "")
    return Verdict(level != "critical", detail)


def to_fields(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, float):
            out[k] = f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "nan"
        else:
            out[k] = str(v)
    return out
