"""The WebSocket fast path in ``_SinkConnection`` against websockets' own frame parser: the same
messages, in the same order, wherever the bytes are split, with control frames, fragments and
oversized frames still handled by websockets."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from ingestor.feed import _SinkConnection


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _conn(max_size: int | None = 1 << 20) -> tuple[_SinkConnection, list[bytes], _Transport]:
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), max_size=max_size)
    request = protocol.connect()
    protocol.send_request(request)
    protocol.receive_data(ServerProtocol().accept(request).serialize())  # a real opening handshake
    protocol.data_to_send()
    (response,) = protocol.events_received()
    assert protocol.state is State.OPEN
    conn = _SinkConnection(protocol, ping_interval=None)
    conn.response = response
    transport = _Transport()
    conn.connection_made(transport)
    got: list[bytes] = []
    conn.sink = got.extend
    return conn, got, transport


def _wire(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


MESSAGES = [b"MESSAGE\nsubscription:1\n\n{}\x00", b"\n", b"x" * 125, b"y" * 126, b"z" * 300]
STREAM = (
    _wire(Opcode.TEXT, MESSAGES[0])
    + _wire(Opcode.TEXT, MESSAGES[1])
    + _wire(Opcode.PING, b"hb")
    + _wire(Opcode.BINARY, MESSAGES[2])
    + _wire(Opcode.TEXT, b"frag-", fin=False)
    + _wire(Opcode.CONT, b"mented", fin=True)
    + _wire(Opcode.TEXT, MESSAGES[3])
    + _wire(Opcode.TEXT, MESSAGES[4])
)
EXPECTED = [*MESSAGES[:3], b"frag-mented", *MESSAGES[3:]]
PONG = _wire(Opcode.PONG, b"hb")


async def test_same_messages_in_order_at_every_split() -> None:
    for cut in range(len(STREAM) + 1):
        conn, got, transport = _conn()
        conn.data_received(STREAM[:cut])
        conn.data_received(STREAM[cut:])
        assert got == EXPECTED, cut
        assert transport.written[:1] == PONG[:1], cut  # the ping was answered (masked pong)
        assert conn.fast_messages >= 2, cut
        before = conn.fast_messages
        conn.data_received(_wire(Opcode.TEXT, b"tail"))  # websockets is between frames again
        assert got[-1] == b"tail" and conn.fast_messages == before + 1, cut


async def test_byte_at_a_time() -> None:
    conn, got, _ = _conn()
    for i in range(len(STREAM)):
        conn.data_received(STREAM[i : i + 1])
    assert got == EXPECTED


async def test_long_length_form() -> None:
    big = b"b" * 70_000  # 64-bit length
    conn, got, _ = _conn()
    wire = _wire(Opcode.TEXT, big) + _wire(Opcode.TEXT, b"after")
    conn.data_received(wire[:5])
    conn.data_received(wire[5:])
    assert got == [big, b"after"]
    assert conn.fast_messages == 2


async def test_no_size_limit_means_no_limit() -> None:
    big = b"b" * 70_000
    conn, got, _ = _conn(max_size=None)
    wire = _wire(Opcode.TEXT, big)
    conn.data_received(wire[:20])  # header and the start: longer than the bytes at hand
    conn.data_received(wire[20:])
    assert got == [big] and conn.fast_messages == 1


async def test_oversized_frame_is_refused_by_websockets() -> None:
    conn, got, _ = _conn(max_size=100)
    conn.data_received(_wire(Opcode.TEXT, b"ok") + _wire(Opcode.TEXT, b"n" * 101))
    assert got == [b"ok"]
    assert conn.protocol.state is not State.OPEN
    assert conn.protocol.close_sent is not None and conn.protocol.close_sent.code == 1009


async def test_masked_frame_from_server_is_a_protocol_error() -> None:
    conn, got, _ = _conn()
    conn.data_received(Frame(Opcode.TEXT, b"masked").serialize(mask=True))
    assert got == []
    assert conn.protocol.state is not State.OPEN
