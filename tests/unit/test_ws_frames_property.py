"""The native WebSocket frame reader (gateway/ws/frames.py), fuzzed: whatever a client sends,
in whatever pieces the network delivers it, the reader returns the messages it meant, or refuses
with the close code RFC 6455 prescribes (1002 protocol error, 1007 bad UTF-8, 1009 too big)."""

from __future__ import annotations

import itertools
import os
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ws.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    INVALID_DATA,
    PING,
    PONG,
    PROTOCOL_ERROR,
    TEXT,
    TOO_BIG,
    FrameReader,
    ProtocolError,
    close_frame,
    close_payload,
    frame,
)
from tests.unit.ws_wire import client_frame

MAX = 4096


def feed_in_pieces(data: bytes, cuts: list[int], max_size: int = MAX) -> list[tuple[int, object]]:
    reader = FrameReader(max_size)
    out: list[tuple[int, object]] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        out += reader.feed(data[a:b])
    return out


def refusal(data: bytes, max_size: int = MAX) -> int:
    with pytest.raises(ProtocolError) as caught:
        FrameReader(max_size).feed(data)
    return caught.value.code


# -- messages, fragments, control frames between them, any split ------------------------------------

payloads = st.one_of(st.text(max_size=300).map(lambda t: (TEXT, t)), st.binary(max_size=300).map(lambda b: (BINARY, b)))
controls = st.one_of(st.binary(max_size=125).map(lambda b: (PING, b)), st.binary(max_size=125).map(lambda b: (PONG, b)))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, object]]]:
    """Bytes of several messages, each cut into fragments with control frames between them, and
    what the reader must return for them, in order."""
    data = bytearray()
    expected: list[tuple[int, object]] = []
    for opcode, message in draw(st.lists(payloads, min_size=1, max_size=6)):
        raw = message.encode() if isinstance(message, str) else message
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            data += client_frame(opcode if i == 0 else CONTINUATION, piece, fin=last)
            if not last and draw(st.booleans()):
                control = draw(controls)
                data += client_frame(*control)
                expected.append(control)
        expected.append((opcode, message))
    return bytes(data), expected


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_fragmented_messages_with_control_frames_between_arrive_whole_in_any_pieces(
        stream: tuple[bytes, list[tuple[int, object]]], cuts: list[int]) -> None:
    data, expected = stream
    assert feed_in_pieces(data, cuts) == expected


@settings(max_examples=30, deadline=None)
@given(streams())
def test_split_at_every_byte_boundary(stream: tuple[bytes, list[tuple[int, object]]]) -> None:
    data, expected = stream
    for at in range(len(data) + 1):
        assert feed_in_pieces(data, [at]) == expected
    assert feed_in_pieces(data, list(range(len(data)))) == expected  # one byte at a time


@given(st.text(max_size=200))
def test_a_character_split_between_fragments_is_still_text(text: str) -> None:
    raw = ("é" + text + "€").encode()
    data = client_frame(TEXT, raw[:1], fin=False) + client_frame(CONTINUATION, raw[1:])
    assert FrameReader(MAX).feed(data) == [(TEXT, "é" + text + "€")]


@given(st.sampled_from([126, 1000, 65535, 65536, 70000]))
def test_every_length_encoding(n: int) -> None:
    payload = os.urandom(n)
    assert FrameReader(1 << 20).feed(client_frame(BINARY, payload)) == [(BINARY, payload)]


def test_messages_before_a_broken_frame_are_kept() -> None:
    data = client_frame(TEXT, b"40") + client_frame(TEXT, b"x", mask=False)
    with pytest.raises(ProtocolError) as caught:
        FrameReader(MAX).feed(data)
    assert caught.value.before == [(TEXT, "40")]


# -- refusals -----------------------------------------------------------------------------------------

@given(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE]), st.binary(max_size=100))
def test_an_unmasked_client_frame_is_a_protocol_error(opcode: int, payload: bytes) -> None:
    assert refusal(client_frame(opcode, payload, mask=False)) == PROTOCOL_ERROR


@given(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), st.binary(max_size=20))
def test_reserved_opcodes_are_a_protocol_error(opcode: int, payload: bytes) -> None:
    assert refusal(client_frame(opcode, payload)) == PROTOCOL_ERROR


@given(st.sampled_from([0x10, 0x20, 0x40]))
def test_reserved_bits_without_an_extension_are_a_protocol_error(rsv: int) -> None:
    assert refusal(client_frame(TEXT, b"4", rsv=rsv)) == PROTOCOL_ERROR


@given(st.sampled_from([PING, PONG, CLOSE]))
def test_control_frames_must_be_final_and_short(opcode: int) -> None:
    assert refusal(client_frame(opcode, b"x", fin=False)) == PROTOCOL_ERROR
    assert refusal(client_frame(opcode, b"x" * 126)) == PROTOCOL_ERROR


def test_fragment_order_is_enforced() -> None:
    assert refusal(client_frame(CONTINUATION, b"abc")) == PROTOCOL_ERROR
    assert refusal(client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b")) == PROTOCOL_ERROR


@given(st.integers(MAX + 1, 1 << 40))
def test_oversize_is_refused_from_the_header_alone(n: int) -> None:
    """1009 as soon as the header announces it: the payload is never waited for nor buffered."""
    header = client_frame(BINARY, b"", length=n)[:-4]  # the length, without key or payload
    assert refusal(header + b"\0\0\0\0") == TOO_BIG


@given(st.integers(2, 8))
def test_oversize_across_fragments(pieces: int) -> None:
    size = MAX // pieces + 1
    data = b"".join(client_frame(TEXT if i == 0 else CONTINUATION, b"a" * size, fin=i == pieces - 1)
                    for i in range(pieces))
    assert refusal(data) == TOO_BIG
    assert FrameReader(size * pieces).feed(data) == [(TEXT, "a" * size * pieces)]


def test_a_length_over_2_63_is_a_protocol_error() -> None:
    assert refusal(bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\0\0\0\0") == PROTOCOL_ERROR


@given(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b", b"\xf4\x90\x80\x80"]))
def test_text_that_is_not_utf8_is_invalid_data(raw: bytes) -> None:
    assert refusal(client_frame(TEXT, raw)) == INVALID_DATA
    assert refusal(client_frame(TEXT, raw[:1], fin=False) + client_frame(CONTINUATION, raw[1:])) == INVALID_DATA


@given(st.binary(max_size=64))
def test_binary_is_not_decoded(raw: bytes) -> None:
    assert FrameReader(MAX).feed(client_frame(BINARY, raw)) == [(BINARY, raw)]


@given(st.binary(min_size=2, max_size=200))
def test_any_garbage_is_messages_or_a_protocol_error(data: bytes) -> None:
    """Never another exception."""
    reader = FrameReader(MAX)
    code = None
    try:
        reader.feed(data)
    except ProtocolError as exc:
        code = exc.code
    assert code in {None, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG}


# -- close frames and the server's frames -------------------------------------------------------------

def test_close_payloads() -> None:
    assert close_payload(b"") == 1005
    assert close_payload(struct.pack("!H", 1000) + b"bye") == 1000
    assert close_payload(struct.pack("!H", 4000)) == 4000
    for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ProtocolError):
            close_payload(struct.pack("!H", code))
    with pytest.raises(ProtocolError):
        close_payload(b"\x03")
    with pytest.raises(ProtocolError) as caught:
        close_payload(struct.pack("!H", 1000) + b"\xff")
    assert caught.value.code == INVALID_DATA


@given(st.binary(max_size=70000))
def test_server_frames_are_unmasked_and_read_back(payload: bytes) -> None:
    data = frame(BINARY, payload)
    assert data[1] & 0x80 == 0
    n = data[1] & 0x7F
    offset = 2 if n < 126 else 4 if n == 126 else 10
    assert data[offset:] == payload
    assert close_frame(1009)[2:] == struct.pack("!H", 1009)


def test_a_large_frame_in_small_pieces_is_gathered_not_rejoined_per_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame up to the payload limit (1 MiB at most) that arrives in tiny pieces (a client
    may send one byte per segment on purpose) is gathered until it is whole: its header is read
    once its length is known, not again with the whole buffer copied for every piece (which
    costs the server the square of the frame's size)."""
    payload = os.urandom(256 * 1024)
    data = client_frame(BINARY, payload) + client_frame(TEXT, b"after")
    headers = 0
    real = FrameReader._header

    def counted(self: FrameReader, buf: bytes, pos: int, end: int) -> tuple[int, int, int, int] | None:
        nonlocal headers
        headers += 1
        return real(self, buf, pos, end)

    monkeypatch.setattr(FrameReader, "_header", counted)
    reader = FrameReader(1 << 20)
    out: list[tuple[int, object]] = []
    for at in range(0, len(data), 64):
        out += reader.feed(data[at:at + 64])
    assert out == [(BINARY, payload), (TEXT, "after")]
    assert headers < 10


@pytest.mark.parametrize("piece", [b"", b"x"], ids=["empty", "one-byte"])
def test_a_message_in_many_tiny_fragments_holds_about_its_size(piece: bytes) -> None:
    """A client may split a message into as many fragments as it likes, empty ones included
    (RFC 6455 allows them). What the reader holds meanwhile must stay near the message's size,
    bounded by the payload limit, not grow by an object per fragment: with a list of pieces, a
    64 KiB message in 1-byte fragments held 2.7 MB, and empty fragments had no bound at all."""
    count = 60000
    data = client_frame(TEXT, b"a", fin=False) + client_frame(CONTINUATION, piece, fin=False, key=b"\1\2\3\4") * count
    reader = FrameReader(65536)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for at in range(0, len(data), 65536):
            assert reader.feed(data[at:at + 65536]) == []
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * 65536, held
    assert reader.feed(client_frame(CONTINUATION, b"z")) == [(TEXT, "a" + piece.decode() * count + "z")]
