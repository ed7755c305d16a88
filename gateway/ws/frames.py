"""RFC 6455 frames: the reader of a client's frames, and the server's frames (`frame`: its
prebuilt messages in `delivery/frames.py` are built with it too).

The reader is fed what the transport delivers (`data_received`), in pieces of any size, and
returns whole messages: fragments are joined, control frames between fragments come out at
once, text is decoded. What breaks the protocol raises `ProtocolError` with the close code to
answer: 1002 for a malformed or unmasked frame, 1007 for text that is not UTF-8, 1009 for a
message over the size limit (known from the header, before its payload is buffered).

No extension is negotiated (no permessage-deflate): a reserved bit is a protocol error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, NORMAL = 1002, 1007, 1009, 1000

Message = tuple[int, str | bytes]


class ProtocolError(Exception):
    """The client broke RFC 6455: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.before: list[Message] = []  # the messages complete before the broken frame


def _unmask_int(data: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key as one big-integer operation: no per-byte Python loop."""
    n = len(data)
    if n == 0:
        return b""
    mask = (key * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def _unmask_c(data: bytes, key: bytes, mask: Callable[[bytes, bytearray], None]) -> bytes:
    buf = bytearray(data)
    mask(key, buf)
    return bytes(buf)


_websocket_mask: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's C helper: fenced in gateway/sio/__init__.py and tests/unit/test_library_fence.py
    from aiohttp._websocket.helpers import websocket_mask as _websocket_mask
except ImportError:  # pragma: no cover - a later aiohttp without it: the pure-Python way
    _websocket_mask = None

C_FROM = 64  # bytes: below, the big-integer way costs no more than the copies the C helper needs


def unmask(data: bytes, key: bytes) -> bytes:
    """`data` XOR the masking key. Client frames are mostly a few bytes (a PONG is one); a large
    one (up to the payload limit, 64 KiB by default) costs about 250 µs the big-integer way and
    2 µs with aiohttp's C helper, which matters when a client sends them on purpose."""
    if _websocket_mask is not None and len(data) >= C_FROM:
        return _unmask_c(data, key, _websocket_mask)
    return _unmask_int(data, key)


class FrameReader:
    """The frames of one client connection, reassembled into messages."""

    __slots__ = ("_buf", "_frag_op", "_frags", "_have", "_need", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # An incomplete frame, in the pieces it came in, kept until the rest arrives. Once its
        # length is known (`_need` bytes in all) the pieces are only gathered, and joined once
        # it is whole: joining on every piece would cost the square of the frame's size for a
        # client that sends a large frame a few bytes at a time.
        self._buf: list[bytes] | None = None
        self._have = 0
        self._need = 0  # 0: the frame's header is not complete yet
        self._frag_op = 0  # opcode of the message being reassembled (0: none)
        # The fragments of that message, joined as they come: a client may send a message in as
        # many fragments as it likes (empty ones too); a list of them would hold an object per
        # fragment, beyond any limit on the message's size.
        self._frags: bytearray | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Every message complete after `data`: (TEXT, str), (BINARY, bytes), or a control
        frame (CLOSE/PING/PONG, its payload)."""
        parts = self._buf
        if parts is not None:
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(parts)
            self._buf = None
        out: list[Message] = []
        try:
            return self._parse(data, out)
        except ProtocolError as exc:
            exc.before = out
            self._buf = None
            raise

    def _parse(self, data: bytes, out: list[Message]) -> list[Message]:
        pos = 0
        end = len(data)
        need = 0
        while end - pos >= 2:
            header = self._header(data, pos, end)
            if header is None:
                break
            opcode, fin, length, at = header
            if end - at < 4 + length:
                need = at + 4 + length - pos
                break
            payload = unmask(data[at + 4:at + 4 + length], data[at:at + 4])
            pos = at + 4 + length
            if opcode in _CONTROL:
                out.append((opcode, payload))
                continue
            if opcode == CONTINUATION:
                frags = self._frags
                assert frags is not None
                frags += payload
                if not fin:
                    continue
                opcode, payload = self._frag_op, bytes(frags)
                self._frag_op, self._frags = 0, None
            elif not fin:
                self._frag_op, self._frags = opcode, bytearray(payload)
                continue
            if opcode == TEXT:
                try:
                    out.append((TEXT, payload.decode("utf-8")))
                except UnicodeDecodeError:
                    raise ProtocolError(INVALID_DATA, "text frame is not UTF-8") from None
            else:
                out.append((BINARY, payload))
        if pos < end:
            rest = data[pos:] if pos else data
            self._buf, self._have, self._need = [rest], len(rest), need
        return out

    def _header(self, data: bytes, pos: int, end: int) -> tuple[int, int, int, int] | None:
        """(opcode, fin, payload length, offset of the masking key) of the frame at `pos`, None
        while its header is incomplete; checked as far as it goes."""
        b0 = data[pos]
        b1 = data[pos + 1]
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x70:
            raise ProtocolError(PROTOCOL_ERROR, "reserved bits set without an extension")
        if not b1 & 0x80:
            raise ProtocolError(PROTOCOL_ERROR, "a client frame must be masked")
        length = b1 & 0x7F
        at = pos + 2
        if opcode in _CONTROL:
            if not fin:
                raise ProtocolError(PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise ProtocolError(PROTOCOL_ERROR, "control frame over 125 bytes")
        elif opcode == CONTINUATION:
            if not self._frag_op:
                raise ProtocolError(PROTOCOL_ERROR, "continuation without a first fragment")
        elif opcode in _DATA:
            if self._frag_op:
                raise ProtocolError(PROTOCOL_ERROR, "new message before the last fragment")
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if length == 126:
            if end - at < 2:
                return None
            length = (data[at] << 8) | data[at + 1]
            at += 2
        elif length == 127:
            if end - at < 8:
                return None
            (length,) = struct.unpack_from("!Q", data, at)
            if length >> 63:
                raise ProtocolError(PROTOCOL_ERROR, "frame length over 2**63")
            at += 8
        if opcode not in _CONTROL and length + len(self._frags or b"") > self.max_size:
            raise ProtocolError(TOO_BIG, f"message over {self.max_size} bytes")
        return opcode, fin, length, at


def close_payload(payload: bytes) -> int:
    """The status code of a client's CLOSE (1005, none given); ProtocolError when malformed."""
    if not payload:
        return 1005
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame of one byte")
    code: int = struct.unpack_from("!H", payload)[0]
    if not ((1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code < 5000):
        raise ProtocolError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "close reason is not UTF-8") from None
    return code


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode()[:120])
