"""The naive baseline for the ingest benchmark: the same STOMP client work (codec, CONNECT,
SUBSCRIBE, parse each MESSAGE), but one awaited ``XADD`` per tick through redis-py, as a first
version of such a service would do.

    .venv/bin/python bench/naive.py --ws ws://127.0.0.1:8790/ws --redis redis://127.0.0.1:6379/14 \
        --key bench:naive --codes A005930,A000660
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import redis.asyncio as aredis
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestor import stomp  # noqa: E402


async def run(ws_url: str, redis_url: str, key: str, codes: list[str]) -> None:
    r = aredis.Redis.from_url(redis_url)
    key_url = ws_url.replace("ws://", "http://").replace("/ws", "/api/v1/refresh-utk")
    from ingestor.sources.toss_web import fetch_guest_key

    guest = await fetch_guest_key(key_url, "https://www.tossinvest.com", 5)
    async with connect(ws_url, subprotocols=["v12.stomp"], proxy=None, max_size=2**20) as ws:  # type: ignore[list-item]
        await ws.send(
            stomp.serialize(
                stomp.Frame(
                    "CONNECT",
                    [("accept-version", "1.2"), ("host", "x"), ("authorization", guest or "")],
                )
            ),
            text=True,
        )
        parser = stomp.Parser()
        for i, code in enumerate(codes):
            sub = stomp.Frame(
                "SUBSCRIBE", [("id", str(i)), ("destination", f"/topic/v1/kr/stock/trade/{code}")]
            )
            await ws.send(stomp.serialize(sub), text=True)
        async for data in ws:
            raw = data.encode() if isinstance(data, str) else data
            for f in parser.feed(raw):
                if isinstance(f, stomp.Frame) and f.command == "MESSAGE":
                    await r.xadd(key, {"code": f.get("subscription") or "", "payload": f.body})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--codes", default="A005930,A000660,A035420,A000020")
    a = ap.parse_args()
    asyncio.run(run(a.ws, a.redis, a.key, a.codes.split(",")))
