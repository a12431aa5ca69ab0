"""STOMP 1.2 frames, sans I/O: bytes in, frames out; frames in, bytes out.

No sockets, no asyncio, no clock: ``Parser.feed(bytes)`` returns the frames (and the errors) found
so far, ``serialize(frame)`` returns bytes, and heart-beat deadlines take ``now`` as an argument.

Errors, all subclasses of ``StompError``::

    StompError
    ├── FrameTooLarge        frame over the size limit
    ├── BadCommand           first line is not a STOMP command
    ├── BadHeader            header without ':', too many headers, line too long, bad escape,
    │                        bad heart-beat value
    ├── BadEncoding          header block is not UTF-8
    ├── BadContentLength     content-length is not a non-negative integer within the limit
    └── MissingNul           the octet after a content-length body is not NUL

After an error the parser drops input up to the next NUL and carries on with the next frame, so
one malformed frame costs that frame only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

CLIENT_COMMANDS = frozenset(
    {"CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "DISCONNECT"}
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

HEARTBEAT = b"\n"


class StompError(Exception):
    """Base of every error the codec raises or reports."""


class FrameTooLarge(StompError):
    pass


class BadCommand(StompError):
    pass


class BadHeader(StompError):
    pass


class BadEncoding(StompError):
    pass


class BadContentLength(StompError):
    pass


class MissingNul(StompError):
    pass


class Frame:
    """One STOMP frame. ``headers`` keeps every occurrence in order; the first one is the value.

    A parsed frame whose header block needed no unescaping keeps that block as text and builds
    the header list only when asked: ``get()`` finds a header in the text directly, which is all
    the hot path needs (``subscription``).
    """

    __slots__ = ("_head", "_headers", "body", "command")

    def __init__(
        self,
        command: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        head: str | None = None,
    ) -> None:
        self.command = command
        self._headers = headers if headers is not None or head is not None else []
        self._head = head  # "COMMAND\nname:value\n..." (validated, nothing to unescape)
        self.body = body

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            assert self._head is not None
            self._headers = _HEADER_LINE.findall(self._head)
        return self._headers

    def get(self, name: str, default: str | None = None) -> str | None:
        if self._headers is None and self._head is not None:
            head = self._head
            i = head.find("\n" + name + ":")
            if i < 0:
                return default
            start = i + len(name) + 2
            end = head.find("\n", start)
            return head[start:] if end < 0 else head[start:end]
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.command, self.headers, self.body) == (other.command, other.headers, other.body)

    def __repr__(self) -> str:
        return f"Frame({self.command!r}, {self.headers!r}, {self.body[:60]!r})"

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value


def frame(command: str, body: bytes = b"", /, **headers: str) -> Frame:
    """Build a frame; ``content_type`` style names become ``content-type``.

    A non-empty body gets a ``content-length`` header unless one was given.
    """
    items = [(k.replace("_", "-"), v) for k, v in headers.items()]
    if body and not any(k == "content-length" for k, _ in items):
        items.append(("content-length", str(len(body))))
    return Frame(command, items, body)


# --- escaping ----------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "c": ":", "\\": "\\"}


def escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and "\r" not in value and ":" not in value:
        return value
    return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\":
            if i + 1 >= n or value[i + 1] not in _ESCAPES:
                seq = value[i : i + 2]
                raise BadHeader(f"undefined escape sequence {seq!r} in header")
            out.append(_ESCAPES[value[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# --- serializing -------------------------------------------------------------------------------


def serialize(f: Frame) -> bytes:
    if f.command not in COMMANDS:
        raise BadCommand(f"unknown command {f.command!r}")
    raw = f.command in _UNESCAPED_COMMANDS
    lines = [f.command]
    for key, value in f.headers:
        if raw:
            if any(c in key for c in ":\n\r") or any(c in value for c in "\n\r"):
                raise BadHeader(f"{f.command} header {key!r} cannot hold ':' or line breaks")
            lines.append(f"{key}:{value}")
        else:
            lines.append(f"{escape(key)}:{escape(value)}")
    head = "\n".join(lines).encode("utf-8")
    return b"".join((head, b"\n\n", f.body, b"\x00"))


# --- parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 256 * 1024
    max_headers: int = 64
    max_header_line: int = 8 * 1024


class Parser:
    """Incremental STOMP parser. Feed bytes; get back frames and ``StompError`` instances."""

    __slots__ = ("_buf", "_plain_head", "_skipping", "limits")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._skipping = False  # after an error: drop input up to the next NUL
        # a MESSAGE header block that can be read as it is: ASCII, no NUL, CR or backslash (so
        # nothing to decode or unescape), a colon on every header line, within the header limit
        self._plain_head = re.compile(
            rb"MESSAGE(?:\n[^:\n\r\\\x00\x80-\xff]*+:[^\n\r\\\x00\x80-\xff]*+){0,%d}+"
            % self.limits.max_headers
        )

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def message(self, data: bytes) -> Frame | None:
        """``data`` as one MESSAGE frame when it is exactly that, in its common plain shape, and
        nothing is buffered; otherwise None, and ``feed(data)`` must be called instead. The same
        frame ``feed`` would return, without the list around it (the ingest hot path).

        The shape: a plain header block (see ``_plain_head``) and a content-length body, alone in
        its WebSocket message. Anything else (or any doubt) takes the general path, which gives
        the same frame or the precise error."""
        if self._buf or self._skipping or not data.startswith(b"MESSAGE\n"):
            return None
        limits = self.limits
        end = data.find(b"\n\n")
        if end < 0 or end > limits.max_header_line or len(data) > limits.max_frame_bytes:
            return None
        raw = data[:end]
        if self._plain_head.fullmatch(raw) is None:
            return None
        text = raw.decode("ascii")
        i = text.find("\ncontent-length:")
        if i < 0:
            return None
        j = text.find("\n", i + 16)
        value = text[i + 16 :] if j < 0 else text[i + 16 : j]
        if not value.isdigit():
            return None
        start = end + 2
        stop = start + int(value)
        if stop + 1 != len(data) or data[stop] != 0:
            return None
        return Frame("MESSAGE", None, data[start:stop], head=text)

    def feed(self, data: bytes) -> list[Frame | StompError]:
        one = self.message(data)
        if one is not None:
            return [one]
        buf = self._buf
        buf += data
        out: list[Frame | StompError] = []
        pos = 0
        limit = self.limits.max_frame_bytes
        n = len(buf)
        while pos < n:
            if self._skipping:
                nul = buf.find(0, pos)
                if nul < 0:
                    pos = n
                    break
                pos = nul + 1
                self._skipping = False
                continue
            # EOLs before a frame are heart-beats.
            c = buf[pos]
            if c == 10:
                pos += 1
                continue
            if c == 13:
                if pos + 1 >= n:
                    break
                if buf[pos + 1] == 10:
                    pos += 2
                    continue
            end, sep = _header_end(buf, pos)
            nul = buf.find(0, pos, end if end >= 0 else n)
            if nul >= 0:
                out.append(BadHeader("frame ended (NUL) before the blank line after the headers"))
                pos = nul + 1
                continue
            if end < 0:
                if n - pos > limit:
                    out.append(FrameTooLarge(f"header block exceeds {limit} bytes"))
                    self._skipping = True
                    pos = n
                break
            body_start = end + sep
            try:
                command, headers, head = _parse_head(bytes(buf[pos:end]), self.limits)
                length = _content_length(headers, head, limit)
            except StompError as exc:
                out.append(exc)
                self._skipping = True
                pos = body_start
                continue
            if length is not None:
                if body_start - pos + length + 1 > limit:
                    out.append(FrameTooLarge(f"frame of {length} body bytes exceeds {limit} bytes"))
                    self._skipping = True
                    pos = body_start
                    continue
                if n < body_start + length + 1:
                    break
                if buf[body_start + length] != 0:
                    out.append(
                        MissingNul(
                            f"expected NUL after {length} body bytes, "
                            f"got {bytes(buf[body_start + length : body_start + length + 1])!r}"
                        )
                    )
                    self._skipping = True
                    pos = body_start + length
                    continue
                body = bytes(buf[body_start : body_start + length])
                pos = body_start + length + 1
            else:
                nul = buf.find(0, body_start)
                if nul < 0:
                    if n - pos > limit:
                        out.append(FrameTooLarge(f"frame without NUL exceeds {limit} bytes"))
                        self._skipping = True
                        pos = n
                    break
                if nul + 1 - pos > limit:
                    out.append(FrameTooLarge(f"frame of {nul + 1 - pos} bytes exceeds {limit}"))
                    pos = nul + 1
                    continue
                body = bytes(buf[body_start:nul])
                pos = nul + 1
            out.append(Frame(command, headers, body, head=head))
        del buf[:pos]
        return out


def _header_end(buf: bytearray, pos: int) -> tuple[int, int]:
    """Index of the end of the header block and the length of the blank-line separator."""
    a = buf.find(b"\n\n", pos)
    b = buf.find(b"\n\r\n", pos, a + 2 if a >= 0 else len(buf))
    if b >= 0 and (a < 0 or b < a):
        return b, 3
    return a, 2


def _parse_head(raw: bytes, limits: Limits) -> tuple[str, list[tuple[str, str]] | None, str | None]:
    """(command, headers, head text): headers is None when the text can be read lazily."""
    if (
        raw.isascii()
        and b"\\" not in raw
        and b"\r" not in raw
        and len(raw) <= limits.max_header_line
    ):
        # the common case (every Toss MESSAGE): nothing to decode, unescape or strip, and no line
        # can be over the limit; check the shape now, split into pairs only if someone asks
        text = raw.decode("ascii")
        lines = text.split("\n")
        command = lines[0]
        if command not in COMMANDS:
            raise BadCommand(f"unknown command {command[:40]!r}")
        if len(lines) - 1 <= limits.max_headers and all(":" in line for line in lines[1:]):
            return command, None, text
    command, headers = _parse_head_general(raw, limits)
    return command, headers, None


_HEADER_LINE = re.compile(r"\n([^:\n]*):([^\n]*)")


def _parse_head_general(raw: bytes, limits: Limits) -> tuple[str, list[tuple[str, str]]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEncoding(f"header block is not UTF-8 (byte {exc.start})") from None
    lines = text.split("\n")
    command = lines[0].removesuffix("\r")
    if command not in COMMANDS:
        raise BadCommand(f"unknown command {command[:40]!r}")
    if len(lines) - 1 > limits.max_headers:
        raise BadHeader(f"{len(lines) - 1} headers, limit is {limits.max_headers}")
    raw_headers = command in _UNESCAPED_COMMANDS
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        line = line.removesuffix("\r")
        if len(line) > limits.max_header_line:
            raise BadHeader(f"header line of {len(line)} chars, limit is {limits.max_header_line}")
        key, sep, value = line.partition(":")
        if not sep:
            raise BadHeader(f"header line without ':': {line[:40]!r}")
        if not raw_headers:
            key, value = unescape(key), unescape(value)
        headers.append((key, value))
    return command, headers


def _content_length(
    headers: Iterable[tuple[str, str]] | None, head: str | None, limit: int
) -> int | None:
    value: str | None = None
    if headers is None:
        assert head is not None
        i = head.find("\ncontent-length:")
        if i >= 0:
            end = head.find("\n", i + 16)
            value = head[i + 16 :] if end < 0 else head[i + 16 : end]
    else:
        value = next((v for k, v in headers if k == "content-length"), None)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise BadContentLength(f"content-length must be a non-negative integer: {value!r}")
    length = int(value)
    if length > limit:
        raise FrameTooLarge(f"content-length {length} exceeds {limit} bytes")
    return length


def parse_all(data: bytes, limits: Limits | None = None) -> list[Frame]:
    """Parse complete input; raise the first error. Leftover partial input is an error too."""
    parser = Parser(limits)
    frames: list[Frame] = []
    for item in parser.feed(data):
        if isinstance(item, StompError):
            raise item
        frames.append(item)
    if parser.buffered and parser._buf.strip(b"\r\n"):
        raise MissingNul("input ended inside a frame")
    return frames


# --- heart-beats -------------------------------------------------------------------------------


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """``"5000,5000"`` -> ``(5000, 5000)``; absent -> ``(0, 0)``."""
    if value is None or value == "":
        return (0, 0)
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise BadHeader(f"heart-beat must be 'x,y' with non-negative integers: {value!r}")
    return (int(parts[0]), int(parts[1]))


@dataclass(frozen=True, slots=True)
class Heartbeats:
    """Negotiated intervals in ms; 0 means none in that direction."""

    send_ms: int
    recv_ms: int


def negotiate(ours: tuple[int, int], theirs: tuple[int, int]) -> Heartbeats:
    """STOMP 1.2: ours = (can send every cx, want every cy); theirs = (sx, sy) from the peer."""
    cx, cy = ours
    sx, sy = theirs
    send = 0 if cx == 0 or sy == 0 else max(cx, sy)
    recv = 0 if sx == 0 or cy == 0 else max(sx, cy)
    return Heartbeats(send, recv)


class HeartbeatClock:
    """Tracks when we must send a heart-beat and when the peer counts as dead. Times in seconds."""

    __slots__ = ("_last_recv", "_last_sent", "dead_factor", "hb")

    def __init__(self, hb: Heartbeats, now: float, dead_factor: float = 3.0) -> None:
        self.hb = hb
        self.dead_factor = dead_factor
        self._last_sent = now
        self._last_recv = now

    def sent(self, now: float) -> None:
        self._last_sent = now

    def received(self, now: float) -> None:
        self._last_recv = now

    def send_due(self, now: float) -> bool:
        return self.hb.send_ms > 0 and (now - self._last_sent) * 1000 >= self.hb.send_ms

    def peer_dead(self, now: float) -> bool:
        limit = self.hb.recv_ms * self.dead_factor
        return self.hb.recv_ms > 0 and (now - self._last_recv) * 1000 > limit

    def silence_s(self, now: float) -> float:
        return now - self._last_recv

    def next_check(self, now: float) -> float:
        """Seconds until something may be due (bounded so a caller can poll with it)."""
        waits = [1.0]
        if self.hb.send_ms:
            waits.append(self._last_sent + self.hb.send_ms / 1000 - now)
        if self.hb.recv_ms:
            waits.append(self._last_recv + self.hb.recv_ms * self.dead_factor / 1000 - now)
        return max(0.01, min(waits))
