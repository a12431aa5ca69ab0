"""What ``toss-ctl`` does, as functions over a sync Redis client returning plain data.

The click commands and the interactive shell both call these, so validation and output match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from ingestor.control import change_results, state_rows
from ingestor.health import Verdict, assess
from ingestor.keys import MARKETS, Keys
from ingestor.subs import Sub
from ingestor.ticks import as_str


def change(r: redis.Redis, keys: Keys, subs: list[Sub], add: bool) -> list[tuple[str, str]]:
    """SADD/SREM each member; publish one nudge when anything changed."""
    pipe = r.pipeline(transaction=False)
    for sub in subs:
        (pipe.sadd if add else pipe.srem)(keys.subs, sub.member)
    counts = pipe.execute()
    if any(counts):
        r.publish(keys.control, "subs")
    return change_results(subs, counts, add)


def subscriptions(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return state_rows(r.smembers(keys.subs), r.hgetall(keys.subs_state))


@dataclass
class Beat:
    key: str
    fields: dict[str, str]
    verdict: Verdict


def heartbeats(r: redis.Redis, keys: Keys, interval_s: float) -> list[Beat]:
    out = []
    for key in sorted(as_str(k) for k in r.scan_iter(match=keys.health_pattern, count=500)):
        fields = {as_str(k): as_str(v) for k, v in r.hgetall(key).items()}
        if fields:
            out.append(Beat(key, fields, assess(fields, interval_s)))
    return out


def health(r: redis.Redis, keys: Keys, interval_s: float) -> tuple[bool, list[dict[str, Any]]]:
    """Every heartbeat with its verdict, plus the ones that should exist and do not."""
    beats = heartbeats(r, keys, interval_s)
    rows: list[dict[str, Any]] = [
        {
            "key": b.key,
            "role": b.fields.get("role", "?"),
            "ok": b.verdict.ok,
            "reason": b.verdict.reason,
            "status": b.fields.get("status", "?"),
        }
        for b in beats
    ]
    if r.scard(keys.subs) and not any(b.fields.get("role") == "ingestor" for b in beats):
        rows.append(
            {
                "key": keys.health_ingestor("*"),
                "role": "ingestor",
                "ok": False,
                "reason": "subscriptions are desired but no ingestor heartbeat exists",
                "status": "missing",
            }
        )
    groups_with_beats = {b.fields.get("group") for b in beats if b.fields.get("role") == "consumer"}
    for g in sorted({g["group"] for g in groups(r, keys)}):
        if g not in groups_with_beats:
            rows.append(
                {
                    "key": keys.health_consumer(g, "*"),
                    "role": "consumer",
                    "ok": False,
                    "reason": f"group {g} exists but no consumer heartbeat",
                    "status": "missing",
                }
            )
    return all(row["ok"] for row in rows), rows


def groups(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    out = []
    for m in MARKETS:
        key = keys.ticks(m)
        if not r.exists(key):
            continue
        for g in r.xinfo_groups(key):
            out.append(
                {
                    "stream": key,
                    "group": as_str(g["name"]),
                    "consumers": int(g["consumers"]),
                    "pending": int(g["pending"]),
                    "lag": g.get("lag"),
                    "last_delivered": as_str(g.get("last-delivered-id", "")),
                }
            )
    return out


def streams(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    now = time.time() * 1000
    out = []
    for m in MARKETS:
        for key in (keys.ticks(m), keys.dead(m)):
            if not r.exists(key):
                continue
            info = r.xinfo_stream(key)
            last = as_str(info.get("last-generated-id", "0-0"))
            newest = r.xrevrange(key, count=1)
            age = (now - int(as_str(newest[0][0]).split("-")[0])) / 1000 if newest else None
            out.append(
                {
                    "stream": key,
                    "length": int(info["length"]),
                    "last_id": last,
                    "newest_age_s": round(age, 1) if age is not None else None,
                    "groups": int(info.get("groups", 0)),
                }
            )
    if r.exists(keys.invalid):
        out.append(
            {
                "stream": keys.invalid,
                "length": r.xlen(keys.invalid),
                "last_id": "",
                "newest_age_s": None,
                "groups": 0,
            }
        )
    return out


def status(r: redis.Redis, keys: Keys, interval_s: float) -> dict[str, Any]:
    beats = heartbeats(r, keys, interval_s)
    subs = subscriptions(r, keys)
    counts: dict[str, int] = {}
    for row in subs:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {
        "ingestors": [
            {
                "name": b.fields.get("name"),
                "ok": b.verdict.ok,
                "status": b.fields.get("status"),
                "reason": b.fields.get("status_reason", ""),
                "ticks_per_s": b.fields.get("ticks_per_s"),
                "ticks_total": b.fields.get("ticks_total"),
                "reconnects": b.fields.get("reconnects"),
                "queue_depth": b.fields.get("queue_depth"),
                "rss_mb": b.fields.get("rss_mb"),
            }
            for b in beats
            if b.fields.get("role") == "ingestor"
        ],
        "subscriptions": {"desired": len(subs), **counts},
        "streams": streams(r, keys),
        "groups": groups(r, keys),
        "consumers": [
            {
                "group": b.fields.get("group"),
                "name": b.fields.get("name"),
                "ok": b.verdict.ok,
                "processed_per_s": b.fields.get("processed_per_s"),
                "errors": b.fields.get("errors"),
            }
            for b in beats
            if b.fields.get("role") == "consumer"
        ],
    }


def tail(
    r: redis.Redis, keys: Keys, market: str, n: int, code: str | None
) -> list[tuple[str, dict[bytes, bytes]]]:
    """The newest ``n`` entries (of ``code`` if given, gap entries always), oldest first."""
    key = keys.ticks(market)
    out: list[tuple[str, dict[bytes, bytes]]] = []
    last = "+"
    while len(out) < n:
        chunk: Any = r.xrevrange(key, max=last, count=max(n * 4, 100))
        if not chunk:
            break
        for eid, fields in chunk:
            eid_s = as_str(eid)
            if eid_s == last:
                continue
            if (
                code is None
                or fields.get(b"code") == code.encode()
                or fields.get(b"channel") == b"gap"
            ):
                out.append((eid_s, fields))
                if len(out) >= n:
                    break
        last = as_str(chunk[-1][0])
        if len(chunk) < max(n * 4, 100):
            break
    return list(reversed(out))
