from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor import stomp
from ingestor.stomp import Frame, Limits, Parser, StompError, frame, parse_all, serialize

MESSAGE = (
    b"MESSAGE\nsubscription:7\nmessage-id:m-1\ncontent-type:application/json\n"
    b"content-length:13\n\n"
    b'{"close":1.5}\x00'
)


def test_round_trip_on_the_same_bytes() -> None:
    [f] = parse_all(MESSAGE)
    assert f.command == "MESSAGE"
    assert f["subscription"] == "7"
    assert f.body == b'{"close":1.5}'
    assert serialize(f) == MESSAGE


def test_header_escaping_both_ways() -> None:
    raw = b"MESSAGE\na\\cb:line\\none\\r\\\\x\n\n\x00"
    [f] = parse_all(raw)
    assert f.headers == [("a:b", "line\none\r\\x")]
    assert serialize(f) == raw


def test_connect_headers_are_not_unescaped() -> None:
    raw = b"CONNECTED\nsession:a\\nb\n\n\x00"
    [f] = parse_all(raw)
    assert f["session"] == "a\\nb"
    assert serialize(f) == raw


def test_connect_rejects_line_breaks_in_values() -> None:
    with pytest.raises(stomp.BadHeader):
        serialize(Frame("CONNECT", [("host", "a\nb")]))


def test_undefined_escape_is_an_error() -> None:
    with pytest.raises(stomp.BadHeader, match="escape"):
        parse_all(b"MESSAGE\na:\\t\n\n\x00")


def test_repeated_header_first_wins() -> None:
    [f] = parse_all(b"MESSAGE\nfoo:1\nfoo:2\n\n\x00")
    assert f["foo"] == "1"
    assert f.headers == [("foo", "1"), ("foo", "2")]


def test_content_length_body_may_contain_nul() -> None:
    body = b"a\x00b\x00c"
    raw = serialize(frame("MESSAGE", body, subscription="1"))
    [f] = parse_all(raw)
    assert f.body == body


def test_body_until_nul_without_content_length() -> None:
    [f] = parse_all(b"MESSAGE\nsubscription:1\n\nhello\x00")
    assert f.body == b"hello"


def test_several_frames_and_heartbeats_in_one_chunk() -> None:
    data = b"\n\r\n" + MESSAGE + b"\n\n" + MESSAGE + b"\r\n"
    frames = parse_all(data)
    assert len(frames) == 2


def test_crlf_line_endings() -> None:
    [f] = parse_all(b"RECEIPT\r\nreceipt-id:5\r\n\r\n\x00")
    assert f["receipt-id"] == "5"


def test_split_at_every_byte_position() -> None:
    data = b"\n" + MESSAGE + b"\r\n" + MESSAGE
    for cut in range(len(data) + 1):
        p = Parser()
        got = p.feed(data[:cut]) + p.feed(data[cut:])
        assert [type(x) for x in got] == [Frame, Frame], cut
        assert all(isinstance(x, Frame) and x.body == b'{"close":1.5}' for x in got)


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"BOGUS\n\n\x00", stomp.BadCommand, "unknown command"),
        (b"MESSAGE\nnocolon\n\n\x00", stomp.BadHeader, "without ':'"),
        (b"MESSAGE\ncontent-length:x\n\nab\x00", stomp.BadContentLength, "non-negative"),
        (b"MESSAGE\ncontent-length:-1\n\nab\x00", stomp.BadContentLength, "non-negative"),
        (b"MESSAGE\ncontent-length:1\n\nab\x00", stomp.MissingNul, "expected NUL"),
        (b"MESSAGE\nk:\xff\xfe\n\n\x00", stomp.BadEncoding, "UTF-8"),
        (b"MESSAGE\ncontent-length:999999999\n\n\x00", stomp.FrameTooLarge, "exceeds"),
        (b"MESSAGE\nsubscription:1\x00", stomp.BadHeader, "before the blank line"),
    ],
)
def test_precise_errors(data: bytes, error: type[StompError], text: str) -> None:
    with pytest.raises(error, match=text):
        parse_all(data)


def test_limits() -> None:
    lim = Limits(max_frame_bytes=2048, max_headers=3, max_header_line=20)
    with pytest.raises(stomp.BadHeader, match="headers, limit"):
        parse_all(b"MESSAGE\na:1\nb:2\nc:3\nd:4\n\n\x00", lim)
    with pytest.raises(stomp.BadHeader, match="header line"):
        parse_all(b"MESSAGE\na:" + b"x" * 30 + b"\n\n\x00", lim)
    with pytest.raises(stomp.FrameTooLarge):
        parse_all(b"MESSAGE\n\n" + b"x" * 3000 + b"\x00", lim)
    p = Parser(lim)
    out = p.feed(b"MESSAGE\n\n" + b"x" * 3000)  # no NUL yet: too large already
    assert len(out) == 1 and isinstance(out[0], stomp.FrameTooLarge)
    assert p.buffered == 0


def test_parser_resyncs_after_an_error() -> None:
    p = Parser()
    out = p.feed(b"BOGUS\nx:y\n\nbody\x00" + MESSAGE)
    assert isinstance(out[0], stomp.BadCommand)
    assert isinstance(out[1], Frame) and out[1]["subscription"] == "7"


def test_frame_helper_adds_content_length() -> None:
    f = frame("SEND", b"abc", destination="/q", content_type="text/plain")
    assert f["content-length"] == "3"
    assert f["content-type"] == "text/plain"


# --- heart-beats ---------------------------------------------------------------------------------


def test_negotiate_per_spec() -> None:
    assert stomp.negotiate((5000, 5000), (10000, 0)) == stomp.Heartbeats(0, 10000)
    assert stomp.negotiate((4000, 4000), (5000, 5000)) == stomp.Heartbeats(5000, 5000)
    assert stomp.negotiate((0, 4000), (5000, 5000)) == stomp.Heartbeats(0, 5000)
    assert stomp.negotiate((4000, 0), (5000, 1000)) == stomp.Heartbeats(4000, 0)


def test_parse_heartbeat() -> None:
    assert stomp.parse_heartbeat(None) == (0, 0)
    assert stomp.parse_heartbeat("10,20") == (10, 20)
    with pytest.raises(stomp.BadHeader):
        stomp.parse_heartbeat("ten,20")


def test_heartbeat_clock_with_explicit_time() -> None:
    clock = stomp.HeartbeatClock(stomp.Heartbeats(1000, 2000), now=100.0, dead_factor=3)
    assert not clock.send_due(100.5)
    assert clock.send_due(101.0)
    clock.sent(101.0)
    assert not clock.send_due(101.5)
    assert not clock.peer_dead(105.9)
    assert clock.peer_dead(106.1)
    clock.received(106.0)
    assert not clock.peer_dead(106.1)
    off = stomp.HeartbeatClock(stomp.Heartbeats(0, 0), now=0.0)
    assert not off.send_due(1e9) and not off.peer_dead(1e9)


# --- properties ----------------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
_frames = st.builds(
    lambda cmd, hdrs, body: Frame(cmd, [*hdrs, ("content-length", str(len(body)))], body),
    st.sampled_from(sorted(stomp.COMMANDS - {"CONNECT", "CONNECTED"})),
    st.lists(st.tuples(_text.filter(lambda k: k != "content-length"), _text), max_size=5),
    st.binary(max_size=200),
)


@given(st.lists(_frames, min_size=1, max_size=5))
def test_serialize_then_parse_is_identity(frames: list[Frame]) -> None:
    data = b"".join(serialize(f) for f in frames)
    assert parse_all(data) == frames


@given(st.lists(_frames, min_size=1, max_size=4), st.data())
def test_arbitrary_chunking_gives_the_same_frames(frames: list[Frame], data: st.DataObject) -> None:
    raw = b"\n".join(serialize(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    p = Parser()
    got: list[Frame | StompError] = []
    prev = 0
    for cut in [*cuts, len(raw)]:
        got += p.feed(raw[prev:cut])
        prev = cut
    assert got == frames


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_give_only_codec_errors(data: bytes) -> None:
    p = Parser(Limits(max_frame_bytes=1024))
    for item in p.feed(data):
        assert isinstance(item, Frame | StompError)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            [
                b"MESSAGE",
                b"\n",
                b":",
                b"\x00",
                b"content-length:",
                b"3",
                b"\\",
                b"\r",
                b"a",
                b"\xff",
            ]
        ),
        max_size=40,
    )
)
def test_structured_garbage_gives_only_codec_errors(parts: list[bytes]) -> None:
    with contextlib.suppress(StompError):
        parse_all(b"".join(parts))


@given(
    st.lists(st.tuples(_text.filter(lambda k: k != "content-length"), _text), max_size=6),
    st.binary(max_size=300),
)
def test_single_message_fast_path_agrees_with_the_general_parser(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    f = Frame("MESSAGE", [*headers, ("content-length", str(len(body)))], body)
    data = serialize(f)
    fast = Parser().feed(data)  # one whole MESSAGE: the fast path (when the shape allows)
    general = Parser().feed(b"\n" + data)  # a leading heart-beat EOL forces the general loop
    assert fast == general == [f]
    assert fast[0].get("content-length") == str(len(body))


def _outcome(items: list[Frame | StompError]) -> list[object]:
    return [(type(i), str(i)) if isinstance(i, StompError) else i for i in items]


_piece = st.sampled_from(
    [b"a", b":", b"\\", b"\\c", b"\r", b"\x00", b"\xff", b"\xc3\xa9", b"\t", b"subscription", b"1"]
)


@settings(max_examples=1000)
@given(
    st.lists(st.lists(_piece, max_size=4).map(b"".join), max_size=4),
    st.binary(max_size=20),
    st.integers(-1, 1),
)
def test_fast_path_never_changes_the_outcome(lines: list[bytes], body: bytes, off: int) -> None:
    """Any header lines (garbage included) before a content-length body, exact or off by one:
    the same frames and the same errors with and without the single-message fast path."""
    head = b"".join(b"\n" + line for line in lines)
    data = b"MESSAGE%s\ncontent-length:%d\n\n%s\x00" % (head, len(body) + off, body)
    assert _outcome(Parser().feed(data)) == _outcome(Parser().feed(b"\n" + data))
