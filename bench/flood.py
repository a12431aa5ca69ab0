"""A flood sender for the benchmarks: the simulator's protocol handling (guest key, CONNECT,
SUBSCRIBE with receipts, heart-beats) with ``stream_ticks`` replaced by pre-encoded MESSAGE frames
sent as fast as the socket takes them (``--rate 0``) or at a fixed rate. Each payload carries its
send time (``sent_ns``) so the latency benchmark can measure frame sent -> entry in Redis.

The frames go out as pre-built WebSocket frames (one text frame per STOMP frame, as Toss sends
them), written to the socket in batches: on this 2-core machine the sender shares the CPU with
the ingestor and Redis, and per-frame ``send()`` through websockets would take CPU the ingestor
needs (a real feed's sender is on another machine).

    .venv/bin/python bench/flood.py --port 8790 [--rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestor.simulator import Scenario, Session, Simulator  # noqa: E402
from ingestor.subs import Sub  # noqa: E402

FRAMES_PER_SUB = 256


def templates(sub_id: str, sub: Sub) -> list[tuple[bytes, bytes]]:
    """(head, tail) around a 19-digit send time, for FRAMES_PER_SUB distinct ticks."""
    out = []
    for i in range(FRAMES_PER_SUB):
        body_head = (
            b'{"code":"%s","dt":"2026-11-26T09:00:00.000+09:00","session":"DAY","currency":"KRW",'
            b'"base":70000,"close":%d,"volume":%d,"tradeType":"BUY","changeType":"UP",'
            b'"cumulativeVolume":%d,"cumulativeAmount":%d,"sent_ns":'
            % (sub.code.encode(), 70000 + i * 100, 1 + i % 50, 1000 + i, 70_000_000 + i)
        )
        body_len = len(body_head) + 19 + 1
        stomp_head = (
            b"MESSAGE\nsubscription:%s\nmessage-id:%d\ncontent-type:application/json\n"
            b"content-length:%d\n\n" % (sub_id.encode(), i, body_len)
        ) + body_head
        tail = b"}\x00"
        out.append((ws_text_header(len(stomp_head) + 19 + len(tail)) + stomp_head, tail))
    return out


def ws_text_header(n: int) -> bytes:
    """An unmasked, final, uncompressed text frame's header for an n-byte payload (RFC 6455)."""
    if n < 126:
        return bytes((0x81, n))
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big")
    return bytes((0x81, 127)) + n.to_bytes(8, "big")


class FloodSession(Session):
    async def stream_ticks(self) -> None:
        sim = self.sim
        stats = sim.stats
        rate = sim.rate
        while not self.subs and not self.closing:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let the whole subscription batch land
        subs = list(self.subs.items())
        frames = [(sub.member, templates(sid, sub)) for sid, sub in subs]
        ws = self.ws
        t0 = time.monotonic()
        n = 0
        i = 0
        while not self.closing and not ws.transport.is_closing():
            if rate:
                due = int((time.monotonic() - t0) * rate) - n
                if due <= 0:
                    await asyncio.sleep(0.0005)
                    continue
            else:
                due = 256
            parts = []
            for _ in range(due):
                member, tpl = frames[i % len(frames)]
                head, tail = tpl[(i // len(frames)) % FRAMES_PER_SUB]
                i += 1
                parts += (head, b"%019d" % time.time_ns(), tail)
                stats.sent[member] += 1
            ws.transport.write(b"".join(parts))
            n += due
            await ws.drain()  # waits while the socket's write buffer is over its limit
            if not rate:
                await asyncio.sleep(0)


def make(port: int, rate: float, compression: str | None = None) -> Simulator:
    """No permessage-deflate by default: compressing every frame would make the sender the
    bottleneck (``--deflate`` to measure the ingestor with it)."""
    sim = Simulator(
        port=port,
        rate=rate,
        scenario=Scenario(budget=2000),
        heartbeat_ms=5000,
        compression=compression,
    )
    sim.session_class = FloodSession
    return sim


async def serve(port: int, rate: float, compression: str | None) -> None:
    sim = make(port, rate, compression)
    async with sim:
        print(f"flood: {sim.ws_url} rate {rate or 'max'}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--rate", type=float, default=0.0, help="ticks/s per connection; 0 = max")
    ap.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    a = ap.parse_args()
    asyncio.run(serve(a.port, a.rate, "deflate" if a.deflate else None))
