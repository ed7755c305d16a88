"""WebSocket frames as a client writes them, for the tests of the native accept path."""

from __future__ import annotations

import os
import struct

from gateway.ws.frames import unmask


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0,
                 key: bytes | None = None, length: int | None = None) -> bytes:
    """A frame as a client writes it (masked unless told otherwise), any length encoding."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = key if key is not None else os.urandom(4)
    return bytes(head) + key + unmask(payload, key)
