"""One STOMP-over-WebSocket connection: handshake, CONNECT, heart-beats both ways, frame dispatch.

A thin asyncio driver around the sans-I/O codec. Vendor specifics (URL, credentials, CONNECT
headers) come from the source object. Third-party exceptions are mapped at this boundary: callers
see ``FeedError`` (retry) or ``AccessDenied`` (back off to the cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import DATA_OPCODES, Opcode
from websockets.frames import Frame as WsFrame
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from ingestor import stomp
from ingestor.errors import AccessDenied, FeedError
from ingestor.settings import Settings

log = logging.getLogger("toss.feed")
# websockets logs whole frames at DEBUG (CONNECT carries the guest key): its logger stays at INFO.
_ws_log = logging.getLogger("toss.feed.websocket")
_ws_log.setLevel(logging.INFO)


class _SinkConnection(ClientConnection):
    """A websockets connection that hands the complete data messages of each read to ``sink``
    (one call per read) right in ``data_received``, instead of queueing them for ``recv()``: no
    future, task switch or queue per message on the hot path. Until a sink is set, messages go
    to ``recv()`` as usual.

    With a sink set, whole unfragmented, uncompressed data frames from the server (the shape of
    every feed message) are cut out of the bytes here: two header bytes, a length, the payload.
    Anything else (control frames, fragments, compressed or masked frames, a frame over the size
    limit) and every byte after it go to websockets' own parser, which also answers pings and
    closes; the fast path takes over again once that parser sits between frames. websockets
    parses a frame through several generator steps, which cost more than the STOMP frame inside.
    """

    sink: Callable[[list[bytes]], None] | None = None
    _fragments: list[bytes] | None = None
    _partial: bytes = b""  # the start of a frame the fast path is waiting to complete
    fast_messages = 0  # messages cut out by the fast path (the rest went through websockets)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        protocol = self.protocol
        if (
            sink is None
            or protocol.state is not State.OPEN
            or protocol.reader.buffer
            or protocol.current_size is not None
        ):
            if self._partial:
                data, self._partial = self._partial + data, b""
            super().data_received(data)
            return
        buf = self._partial + data if self._partial else data
        self._partial = b""
        limit = protocol.max_message_size or sys.maxsize  # None: no limit
        messages: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            if n - pos < 2:
                self._partial = buf[pos:]
                break
            head1, head2 = buf[pos], buf[pos + 1]
            if head1 not in _FIN_DATA or head2 & 0x80:
                break  # not a plain data frame: websockets' parser takes it from here
            length, start = head2, pos + 2
            if length == 126:
                start = pos + 4
                length = int.from_bytes(buf[pos + 2 : start])
            elif length == 127:
                start = pos + 10
                length = int.from_bytes(buf[pos + 2 : start])
            if start > n:
                self._partial = buf[pos:]
                break
            if length > limit:
                break  # websockets refuses it with the right close code
            end = start + length
            if end > n:
                self._partial = buf[pos:]
                break
            messages.append(buf[start:end])
            pos = end
        if messages:
            self.fast_messages += len(messages)
            sink(messages)
        if pos < n and not self._partial:
            super().data_received(buf[pos:])

    def process_event(self, event: Any) -> None:
        sink = self.sink
        if sink is None or not isinstance(event, WsFrame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)
            return
        data = bytes(event.data)
        if event.opcode is Opcode.CONT:
            if self._fragments is not None:
                self._fragments.append(data)
                if event.fin:
                    whole, self._fragments = b"".join(self._fragments), None
                    sink([whole])
        elif event.fin:
            sink([data])
        else:
            self._fragments = [data]


_FIN_DATA = (0x81, 0x82)  # FIN set, no RSV bits (uncompressed), opcode text or binary


class FeedSource(Protocol):
    name: str
    subprotocols: tuple[str, ...]

    @property
    def ws_url(self) -> str: ...

    @property
    def ws_headers(self) -> dict[str, str]: ...

    @property
    def origin(self) -> str: ...

    async def connect_frame(self, heartbeat_ms: int) -> stomp.Frame: ...


class FrameHandler(Protocol):
    def on_message(self, frame: stomp.Frame, recv_ms: int) -> None: ...

    def on_receipt(self, receipt_id: str) -> None: ...

    def on_error(self, frame: stomp.Frame) -> None:
        """An ERROR frame (the server closes after it; the connection ends either way)."""
        ...

    def on_invalid(self, reason: str, detail: str, sample: bytes) -> None: ...

    @property
    def congested(self) -> bool:
        """True when no more frames should be read until ``drain()`` returns."""
        ...

    async def drain(self) -> None:
        """Back-pressure: return when there is room for more frames."""
        ...


def _error_reason(exc: stomp.StompError) -> str:
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class FeedConnection:
    """Open with ``await open()``, then ``await run()`` until it ends (always with an exception)."""

    def __init__(self, source: FeedSource, settings: Settings, handler: FrameHandler) -> None:
        self.source = source
        self.settings = settings
        self.handler = handler
        self.parser = stomp.Parser(stomp.Limits(max_frame_bytes=settings.max_frame_bytes))
        self.ws: ClientConnection | None = None
        self.clock: stomp.HeartbeatClock | None = None
        self.server_info: dict[str, str] = {}
        self.last_message = time.monotonic()
        self.has_subscriptions = False
        self._ids = itertools.count(1)
        self._receipts: dict[str, asyncio.Future[None]] = {}
        self._closing = False
        self._paused = False
        self._resume_task: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()
        self._failure: FeedError | None = None

    def next_id(self) -> str:
        return str(next(self._ids))

    async def open(self) -> None:
        s = self.settings
        connect_frame = await self.source.connect_frame(s.heartbeat_interval_ms)
        try:
            self.ws = await connect(
                self.source.ws_url,
                subprotocols=[Subprotocol(p) for p in self.source.subprotocols],
                origin=Origin(self.source.origin) if self.source.origin else None,
                additional_headers=self.source.ws_headers,
                compression="deflate",
                max_size=s.max_ws_message_bytes,
                max_queue=1024,  # messages buffered before reading pauses: fewer pause/resume
                open_timeout=s.connect_timeout_s,
                ping_interval=None,
                close_timeout=1.0,
                proxy=None,
                user_agent_header=None,
                logger=_ws_log,
                create_connection=_SinkConnection,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise AccessDenied(f"WebSocket handshake refused: HTTP {code}") from None
            if 300 <= code < 400:
                raise AccessDenied(
                    f"WebSocket handshake redirected (HTTP {code}), login?"
                ) from None
            raise FeedError(f"WebSocket handshake failed: HTTP {code}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = str(exc) or type(exc).__name__
            raise FeedError(f"cannot connect to {self.source.ws_url}: {reason}") from None
        try:
            await self._send(connect_frame)
            async with asyncio.timeout(s.connect_timeout_s):
                connected = await self._await_connected()
        except TimeoutError:
            await self._abort()
            raise FeedError(f"no CONNECTED within {s.connect_timeout_s:g} s") from None
        except ConnectionClosed as exc:
            await self._abort()
            raise FeedError(f"server closed the connection during CONNECT ({exc.rcvd})") from None
        except FeedError:
            await self._abort()
            raise
        theirs = stomp.parse_heartbeat(connected.get("heart-beat"))
        ours = (s.heartbeat_interval_ms, s.heartbeat_interval_ms)
        hb = stomp.negotiate(ours, theirs)
        if hb.send_ms == 0 and s.heartbeat_interval_ms:
            # The server did not say: keep the socket warm anyway (the feed doc's fallback).
            hb = stomp.Heartbeats(s.heartbeat_interval_ms, hb.recv_ms)
        self.clock = stomp.HeartbeatClock(hb, time.monotonic(), s.dead_peer_factor)
        self.server_info = {k: v for k, v in connected.headers if k in ("version", "server")}
        log.info(
            "connected to %s (heart-beat send %d ms, expect %d ms)",
            self.source.ws_url,
            hb.send_ms,
            hb.recv_ms,
        )

    async def _await_connected(self) -> stomp.Frame:
        assert self.ws is not None
        while True:
            data = await self.ws.recv()
            raw = data.encode() if isinstance(data, str) else data
            for item in self.parser.feed(raw):
                if isinstance(item, stomp.StompError):
                    raise FeedError(f"malformed frame during CONNECT: {item}")
                if item.command == "CONNECTED":
                    return item
                if item.command == "ERROR":
                    msg = item.get("message") or item.body.decode("utf-8", "replace")[:200]
                    raise AccessDenied(f"server refused CONNECT: {msg}")

    async def _send(self, f: stomp.Frame) -> None:
        assert self.ws is not None
        await self.ws.send(stomp.serialize(f), text=True)
        if self.clock:
            self.clock.sent(time.monotonic())

    async def send(self, f: stomp.Frame) -> None:
        try:
            await self._send(f)
        except ConnectionClosed as exc:
            raise FeedError(f"connection closed while sending {f.command}: {exc}") from None

    async def run(self) -> None:
        """Read and keep alive until the connection ends; raises ``FeedError`` saying why."""
        assert self.ws is not None
        reader = asyncio.create_task(self._read(), name="feed-reader")
        keeper = asyncio.create_task(self._keepalive(), name="feed-keepalive")
        try:
            done, _ = await asyncio.wait({reader, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if self._failure is not None:
                # the server said why (ERROR) before closing: that beats a heart-beat send that
                # found the socket closed in the same instant
                raise self._failure
            for t in (reader, keeper):
                if t in done:
                    t.result()
            raise FeedError("connection ended")
        finally:
            for t in (reader, keeper):
                t.cancel()
            for t in (reader, keeper):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._abort()

    async def _read(self) -> None:
        """Frames are handled as they arrive (``_on_messages`` runs inside ``data_received``);
        this waits until the connection ends or a frame ends it."""
        ws = self.ws
        assert isinstance(ws, _SinkConnection)
        self._ended = asyncio.Event()
        self._failure = None
        ws.sink = self._on_messages
        closed = asyncio.ensure_future(ws.wait_closed())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({closed, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ws.sink = None
            for f in (closed, ended):
                f.cancel()
        if self._failure is not None:
            raise self._failure
        code, reason = ws.close_code, ws.close_reason
        raise FeedError("connection closed by server" + (f" ({code} {reason})" if code else ""))

    def _on_messages(self, batch: list[bytes]) -> None:
        """The WebSocket messages of one socket read (they share one receive time)."""
        assert self.clock is not None and self.ws is not None
        if self._failure is not None:
            return
        now = time.monotonic()
        self.clock.received(now)
        recv_ms = int(time.time() * 1000)
        handler = self.handler
        on_message = handler.on_message
        message, feed = self.parser.message, self.parser.feed
        for raw in batch:
            frame = message(raw)  # nearly every feed message
            if frame is not None:
                self.last_message = now
                on_message(frame, recv_ms)
                continue
            for item in feed(raw):
                if isinstance(item, stomp.StompError):
                    handler.on_invalid(_error_reason(item), str(item), raw[:200])
                elif item.command == "MESSAGE":
                    self.last_message = now
                    on_message(item, recv_ms)
                elif item.command == "RECEIPT":
                    rid = item.get("receipt-id") or ""
                    fut = self._receipts.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    handler.on_receipt(rid)
                elif item.command == "ERROR":
                    msg = item.get("message") or item.body.decode("utf-8", "replace")[:200]
                    handler.on_error(item)
                    self._failure = FeedError(f"server ERROR: {msg}")
                    self._ended.set()
                    return
                else:
                    handler.on_invalid("unexpected_command", item.command, raw[:200])
        if handler.congested and not self._paused:
            # back-pressure: stop reading the socket until the handler has room again
            self._paused = True
            self.ws.transport.pause_reading()
            self._resume_task = asyncio.ensure_future(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        assert self.ws is not None
        try:
            await self.handler.drain()
        finally:
            self._paused = False
            with contextlib.suppress(Exception):
                self.ws.transport.resume_reading()

    async def _keepalive(self) -> None:
        assert self.ws is not None and self.clock is not None
        clock = self.clock
        stale_s = self.settings.stale_feed_s
        while True:
            now = time.monotonic()
            if clock.peer_dead(now):
                raise FeedError(f"no data or heart-beat for {clock.silence_s(now):.1f} s")
            if stale_s and self.has_subscriptions and now - self.last_message > stale_s:
                raise FeedError(f"stale feed: no MESSAGE for {now - self.last_message:.1f} s")
            if clock.send_due(now):
                try:
                    await self.ws.send(stomp.HEARTBEAT, text=True)
                except ConnectionClosed:
                    raise FeedError("connection closed while sending heart-beat") from None
                clock.sent(now)
            await asyncio.sleep(clock.next_check(time.monotonic()))

    def expect_receipt(self, receipt_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[receipt_id] = fut
        return fut

    async def disconnect(self, timeout_s: float = 1.0) -> None:
        """Graceful close: DISCONNECT with a receipt, wait at most ``timeout_s``, close."""
        if self.ws is None:
            return
        rid = "disconnect-" + self.next_id()
        fut = self.expect_receipt(rid)
        with contextlib.suppress(FeedError, ConnectionClosed, TimeoutError):
            await self.send(stomp.Frame("DISCONNECT", [("receipt", rid)]))
            await asyncio.wait_for(fut, timeout_s)
        await self._abort()

    async def _abort(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 1.0)
