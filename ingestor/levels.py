"""Health levels from metrics and thresholds (pure: no I/O, no clock).

Each heartbeat carries ``level`` (healthy / degraded / critical) and the ``reasons``; the
thresholds are settings (``TOSS_HEALTH_*``, ``TOSS_RSS_*_MB``). ``toss-ctl health`` and the
``check`` commands fail on critical (and on a missing or stale heartbeat).
"""

from __future__ import annotations

from collections.abc import Mapping

from ingestor.settings import Settings

HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"
_RANK = {HEALTHY: 0, DEGRADED: 1, CRITICAL: 2}


class _Levels:
    def __init__(self) -> None:
        self.level = HEALTHY
        self.reasons: list[str] = []

    def add(self, level: str, reason: str) -> None:
        if _RANK[level] > _RANK[self.level]:
            self.level = level
        self.reasons.append(f"{level}: {reason}")

    def check(self, value: float, degraded: float, critical: float, what: str) -> None:
        if critical and value >= critical:
            self.add(CRITICAL, f"{what} {value:g} >= {critical:g}")
        elif degraded and value >= degraded:
            self.add(DEGRADED, f"{what} {value:g} >= {degraded:g}")


def _process(lv: _Levels, m: Mapping[str, float], s: Settings) -> None:
    lv.check(m.get("cpu_percent", 0), s.health_cpu_percent, 0, "cpu %")
    lv.check(m.get("rss_mb", 0), s.rss_soft_mb, s.rss_hard_mb, "rss MB")


def ingestor_level(m: Mapping[str, float], s: Settings) -> tuple[str, list[str]]:
    """Metrics: connected, down_s, reconnects_last_hour, desired, failed, frames_total,
    invalid_total, queue_depth, spool_bytes, active, last_tick_age_s, cpu_percent, rss_mb."""
    lv = _Levels()
    if not m.get("connected"):
        down = m.get("down_s", 0)
        if s.health_down_critical_s and down >= s.health_down_critical_s:
            lv.add(CRITICAL, f"transport down for {down:.0f} s")
        else:
            lv.add(DEGRADED, f"transport down for {down:.0f} s")
    lv.check(
        m.get("reconnects_last_hour", 0),
        s.health_reconnects_per_hour,
        s.health_reconnects_per_hour_critical,
        "reconnects in the last hour",
    )
    desired = m.get("desired", 0)
    if desired and m.get("failed", 0):
        ratio = m["failed"] / desired
        level = CRITICAL if ratio >= s.health_failed_ratio_critical else DEGRADED
        lv.add(level, f"{m['failed']:g} of {desired:g} subscriptions failed")
    frames = m.get("frames_total", 0)
    if frames:
        lv.check(
            m.get("invalid_total", 0) / frames,
            s.health_invalid_ratio,
            s.health_invalid_ratio_critical,
            "invalid frame ratio",
        )
    lv.check(
        m.get("queue_depth", 0) / s.max_message_queue_size,
        s.health_queue_fill,
        s.health_queue_fill_critical,
        "queue fill",
    )
    spool = m.get("spool_bytes", 0)
    if spool:
        fill = spool / max(1, s.spool_max_mb << 20)
        lv.add(
            CRITICAL if fill >= s.health_spool_fill_critical else DEGRADED,
            f"spool in use ({spool / 1048576:.1f} MB, {fill:.0%} of the cap)",
        )
    age = m.get("last_tick_age_s", -1)
    if s.health_tick_age_s and m.get("active", 0) and (age < 0 or age >= s.health_tick_age_s):
        lv.add(DEGRADED, f"no tick for {age:.0f} s with subscriptions active")
    _process(lv, m, s)
    return lv.level, lv.reasons


def consumer_level(m: Mapping[str, float], s: Settings) -> tuple[str, list[str]]:
    """Metrics: lag, pending_age_s, batches, failed_batches, dead_lettered, cpu_percent, rss_mb."""
    lv = _Levels()
    lv.check(m.get("lag", 0), s.health_lag, s.health_lag_critical, "lag")
    lv.check(m.get("pending_age_s", 0), s.health_pending_age_s, 0, "oldest pending (s)")
    batches = m.get("batches", 0)
    if batches:
        lv.check(
            m.get("failed_batches", 0) / batches,
            s.health_error_ratio,
            s.health_error_ratio_critical,
            "handler error ratio",
        )
    if m.get("dead_lettered", 0):
        lv.add(DEGRADED, f"{m['dead_lettered']:g} entries dead-lettered")
    _process(lv, m, s)
    return lv.level, lv.reasons
