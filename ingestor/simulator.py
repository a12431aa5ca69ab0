"""A local server that behaves like the Toss web feed: guest-key HTTP endpoint and STOMP over
WebSocket, on one loopback port. It serves the demo, the tests and the benchmarks.

- ``GET /api/v1/refresh-utk`` -> ``{"result": "<guest key>"}`` (403 in the ``reject-key`` scenario)
- ``/ws`` selects subprotocol ``v12.stomp``; CONNECT must carry an issued ``authorization``
- MESSAGE frames carry ``subscription``, ``message-id``, ``content-type``, ``content-length`` and no
  ``destination``, like the real feed
- faults: drop the connection every N s, stall (no heart-beats, no data), ERROR mid-session,
  malformed frames, ERROR on CONNECT, refused subscriptions, subscriptions over budget

``Simulator.stats`` records what was sent (count and last cumulativeVolume per code), so a test can
prove nothing was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ingestor import stomp
from ingestor.simfeed import TickGen
from ingestor.subs import Sub

log = logging.getLogger("toss.simulator")

GUEST_KEY_PATH = "/api/v1/refresh-utk"
WS_PATH = "/ws"
_STOCK_DEST = re.compile(r"/topic/v\d+/(kr|us)/stock/(trade|index|bidoffer)/(.+)")
_CRYPTO_DEST = re.compile(r"/topic/v\d+/(crypto)/(vwap)/(.+)")

# Malformed frames, by reason (sent as binary WebSocket messages: some are not UTF-8).
MALFORMED: dict[str, bytes] = {
    "bad_command": b"BOGUS\nsubscription:1\n\n{}\x00",
    "bad_header": b"MESSAGE\nsubscription:\\t1\n\n{}\x00",
    "missing_nul": b"MESSAGE\nsubscription:1\ncontent-length:2\n\n{}}\x00",
    "invalid_utf8": b"MESSAGE\nsubscription:\xff\xfe\n\n{}\x00",
    "bad_content_length": b"MESSAGE\nsubscription:1\ncontent-length:12x\n\n{}\x00",
    "huge_content_length": b"MESSAGE\nsubscription:1\ncontent-length:99999999999\n\n{}\x00",
    "oversized": b"MESSAGE\nsubscription:1\n\n" + b"x" * (300 * 1024) + b"\x00",
    "not_json": b"MESSAGE\nsubscription:%SUB%\nmessage-id:x\ncontent-length:8\n\nnot json\x00",
    "unknown_subscription": b"MESSAGE\nsubscription:no-such-id\ncontent-length:2\n\n{}\x00",
}


@dataclass(frozen=True)
class Scenario:
    """What the simulator does besides serving ticks. Durations in seconds, 0 = never."""

    drop_every_s: float = 0.0
    stall_after_s: float = 0.0
    error_after_s: float = 0.0
    malformed_every: int = 0
    reject_key: bool = False
    reject_connect: bool = False
    close_during_connect: bool = False
    refuse_codes: frozenset[str] = frozenset()
    budget: int = 100
    require_auth: bool = True
    send_receipts: bool = True
    slow_send_ms: float = 0.0


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(),
    "drop": Scenario(drop_every_s=5.0),
    "stall": Scenario(stall_after_s=5.0),
    "error": Scenario(error_after_s=5.0),
    "malformed": Scenario(malformed_every=50),
    "reject-key": Scenario(reject_key=True),
    "reject-connect": Scenario(reject_connect=True),
    "close-during-connect": Scenario(close_during_connect=True),
    "slow": Scenario(slow_send_ms=50.0),
}


@dataclass
class Stats:
    connections: int = 0
    connects_refused: int = 0
    keys_issued: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # member -> ticks sent
    last_cum_volume: dict[str, int] = field(default_factory=dict)  # member -> last value sent
    malformed_sent: Counter[str] = field(default_factory=Counter)
    subscribes: int = 0
    unsubscribes: int = 0
    errors_sent: int = 0
    drops: int = 0

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())


def parse_destination(dest: str) -> Sub | None:
    m = _STOCK_DEST.fullmatch(dest) or _CRYPTO_DEST.fullmatch(dest)
    return Sub(m.group(1), m.group(2), m.group(3)) if m else None


class Simulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 20.0,
        scenario: Scenario | None = None,
        heartbeat_ms: int = 5000,
        compression: str | None = "deflate",
    ) -> None:
        self.host = host
        self.compression = compression  # permessage-deflate offered to clients, or None
        self.port = port
        self.rate = rate  # ticks per second per connection, spread over its subscriptions
        self.scenario = scenario or Scenario()
        self.heartbeat_ms = heartbeat_ms
        self.stats = Stats()
        self.issued_keys: set[str] = set()
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._gens: dict[str, TickGen] = {}
        self.session_class: type[Session] = Session

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def guest_key_url(self) -> str:
        return f"http://{self.host}:{self.port}{GUEST_KEY_PATH}"

    def set_scenario(self, **changes: Any) -> None:
        self.scenario = replace(self.scenario, **changes)

    def active_subscriptions(self) -> set[str]:
        return {sub.member for s in self._sessions for sub in s.subs.values()}

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            subprotocols=["v12.stomp"],  # type: ignore[list-item]
            process_request=self._http,
            max_size=1024 * 1024,
            ping_interval=None,
            compression=self.compression,
            open_timeout=2,
            close_timeout=1,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        log.info("simulator listening on %s (guest key at %s)", self.ws_url, self.guest_key_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def drop_all(self) -> None:
        """Close every session now (as a network drop would, but after flushing what was sent)."""
        for s in list(self._sessions):
            await s.drop("dropped by test")

    def generator(self, sub: Sub) -> TickGen:
        gen = self._gens.get(sub.member)
        if gen is None:
            gen = self._gens[sub.member] = TickGen(sub)
        return gen

    # --- HTTP --------------------------------------------------------------------------------

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == GUEST_KEY_PATH:
            if self.scenario.reject_key:
                return conn.respond(403, "forbidden\n")
            key = secrets.token_urlsafe(24)
            self.issued_keys.add(key)
            self.stats.keys_issued += 1
            resp = conn.respond(200, '{"result":"' + key + '"}')
            resp.headers["Content-Type"] = "application/json"
            return resp
        if path != WS_PATH:
            return conn.respond(404, "not found\n")
        return None

    # --- WebSocket ---------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = self.session_class(self, ws)
        self._sessions.add(session)
        self.stats.connections += 1
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            self._sessions.discard(session)
            await session.cleanup()


class Session:
    def __init__(self, sim: Simulator, ws: ServerConnection) -> None:
        self.sim = sim
        self.ws = ws
        self.parser = stomp.Parser()
        self.subs: dict[str, Sub] = {}  # subscription id -> Sub
        self.tasks: list[asyncio.Task[None]] = []
        self.hb = stomp.Heartbeats(0, 0)
        self.msg_id = 0
        self.stalled = False
        self.closing = False

    async def send_frame(self, f: stomp.Frame) -> None:
        await self.ws.send(stomp.serialize(f), text=True)

    async def error(self, message: str, receipt: str | None = None) -> None:
        headers = [("message", message)]
        if receipt:
            headers.append(("receipt-id", receipt))
        self.sim.stats.errors_sent += 1
        self.closing = True
        await self.send_frame(stomp.Frame("ERROR", headers, message.encode()))
        await self.ws.close()

    async def drop(self, reason: str) -> None:
        self.closing = True
        self.sim.stats.drops += 1
        await self.ws.close(1001, reason)

    async def run(self) -> None:
        connected = False
        async for data in self.ws:
            raw = data.encode() if isinstance(data, str) else data
            for item in self.parser.feed(raw):
                if isinstance(item, stomp.StompError):
                    await self.error(f"malformed frame: {item}")
                    return
                if not connected:
                    if item.command not in ("CONNECT", "STOMP"):
                        await self.error("expected CONNECT")
                        return
                    if not await self.on_connect(item):
                        return
                    connected = True
                    continue
                await self.on_frame(item)
                if self.closing:
                    return

    async def on_connect(self, f: stomp.Frame) -> bool:
        sc = self.sim.scenario
        if sc.close_during_connect:
            self.sim.stats.connects_refused += 1
            await self.ws.close(1011, "going away")
            return False
        auth = f.get("authorization")
        if sc.reject_connect or (sc.require_auth and auth not in self.sim.issued_keys):
            self.sim.stats.connects_refused += 1
            await self.error("Unauthorized: invalid authorization")
            return False
        cx, cy = stomp.parse_heartbeat(f.get("heart-beat"))
        ours = (self.sim.heartbeat_ms, self.sim.heartbeat_ms)
        self.hb = stomp.negotiate(ours, (cx, cy))
        await self.send_frame(
            stomp.Frame(
                "CONNECTED",
                [
                    ("version", "1.2"),
                    ("heart-beat", f"{ours[0]},{ours[1]}"),
                    ("server", "toss-sim/1"),
                ],
            )
        )
        self.tasks.append(asyncio.create_task(self.stream_ticks()))
        if self.hb.send_ms:
            self.tasks.append(asyncio.create_task(self.heartbeats()))
        self.tasks.append(asyncio.create_task(self.faults()))
        return True

    async def on_frame(self, f: stomp.Frame) -> None:
        sc = self.sim.scenario
        receipt = f.get("receipt")
        if f.command == "SUBSCRIBE":
            sub_id, dest = f.get("id"), f.get("destination")
            sub = parse_destination(dest or "")
            self.sim.stats.subscribes += 1
            if not sub_id or sub is None:
                await self.error(f"unknown destination {dest!r}", receipt)
                return
            if sub.code in sc.refuse_codes:
                await self.error(f"Subscription refused: {dest}", receipt)
                return
            if len(self.subs) >= sc.budget:
                await self.error(f"Too many subscriptions (limit {sc.budget})", receipt)
                return
            self.subs[sub_id] = sub
        elif f.command == "UNSUBSCRIBE":
            self.sim.stats.unsubscribes += 1
            self.subs.pop(f.get("id") or "", None)
        elif f.command == "DISCONNECT":
            self.closing = True  # no tick may follow the RECEIPT
            if receipt:
                await self.send_frame(stomp.Frame("RECEIPT", [("receipt-id", receipt)]))
            self.closing = True
            await self.ws.close()
            return
        if receipt and sc.send_receipts:
            await self.send_frame(stomp.Frame("RECEIPT", [("receipt-id", receipt)]))

    async def heartbeats(self) -> None:
        while not self.closing:
            await asyncio.sleep(self.hb.send_ms / 1000)
            if not self.stalled:
                await self.ws.send(stomp.HEARTBEAT, text=True)

    async def faults(self) -> None:
        sc = self.sim.scenario
        start = time.monotonic()
        while not self.closing:
            await asyncio.sleep(0.05)
            age = time.monotonic() - start
            if sc.stall_after_s and age >= sc.stall_after_s:
                self.stalled = True
            if sc.error_after_s and age >= sc.error_after_s:
                await self.error("Internal server error")
                return
            if sc.drop_every_s and age >= sc.drop_every_s:
                await self.drop("simulated drop")
                return

    async def stream_ticks(self) -> None:
        sim = self.sim
        stats = sim.stats
        tick_s = 0.01 if sim.rate < 20000 else 0.002
        emitted = 0.0
        last = time.monotonic()
        rr = 0
        kinds = list(MALFORMED)
        n_malformed = 0
        while not self.closing:
            await asyncio.sleep(tick_s)
            now = time.monotonic()
            emitted += sim.rate * (now - last)
            last = now
            if self.stalled or not self.subs:
                emitted = 0.0
                continue
            due = int(emitted)
            emitted -= due
            ids = list(self.subs)
            for _ in range(due):
                if self.closing or self.stalled:
                    return
                sub_id = ids[rr % len(ids)]
                rr += 1
                sub = self.subs.get(sub_id)
                if sub is None:
                    continue
                gen = sim.generator(sub)
                body, cum = gen.next_bytes()
                self.msg_id += 1
                data = (
                    b"MESSAGE\nsubscription:%s\nmessage-id:%d\ncontent-type:application/json\ncontent-length:%d\n\n%s\x00"
                    % (
                        sub_id.encode(),
                        self.msg_id,
                        len(body),
                        body,
                    )
                )
                if sim.scenario.slow_send_ms:
                    await asyncio.sleep(sim.scenario.slow_send_ms / 1000)
                try:
                    await self.ws.send(data, text=True)
                except ConnectionClosed:
                    return
                stats.sent[sub.member] += 1
                stats.last_cum_volume[sub.member] = cum
                every = sim.scenario.malformed_every
                if every and self.msg_id % every == 0:
                    kind = kinds[n_malformed % len(kinds)]
                    n_malformed += 1
                    bad = MALFORMED[kind].replace(b"%SUB%", sub_id.encode())
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.send(bad, text=False)
                    stats.malformed_sent[kind] += 1

    async def cleanup(self) -> None:
        self.closing = True
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await t


async def serve_forever(
    host: str, port: int, rate: float, scenario: Scenario, heartbeat_ms: int
) -> None:
    sim = Simulator(host, port, rate, scenario, heartbeat_ms)
    async with sim:
        print(f"simulator: ws {sim.ws_url}  guest key {sim.guest_key_url}", flush=True)
        await asyncio.Event().wait()
