"""Bytes on the wire, built once per event and shared by every recipient.

A Socket.IO event to a client is the Engine.IO message `4` + the Socket.IO packet
`2/notifications,["event",data,"offset"]`; over WebSocket that text goes in one unmasked
text frame (RFC 6455, server to client). Fan-out to a thousand sockets writes the same
`bytes` object a thousand times: no per-recipient encoding, no per-recipient task.
"""

from __future__ import annotations

import orjson

from gateway.ws.frames import TEXT, frame
from publisher.envelope import NAMESPACE

_EVENT_PREFIX = b"2" + NAMESPACE.encode() + b","


def event_packet(event: str, data: object, offset: str | None) -> bytes:
    """The Socket.IO EVENT packet text (without the Engine.IO `4`), UTF-8.

    The offset rides as the last argument, as Node's socket.io does with connection state
    recovery: socket.io-client >= 4.6 keeps it as `_lastOffset` and sends it back on
    reconnection; a handler declared `(data) => ...` never sees it.
    """
    args = [event, data] if offset is None else [event, data, offset]
    return _EVENT_PREFIX + orjson.dumps(args)


def event_head(event: str, data: object, *, with_offset: bool) -> bytes:
    """The EVENT packet without its offset: it ends `,"` where each recipient's offset goes
    (then `"]`), or, with no offset, it is the whole packet. The offset is a socket's position
    vector (`offsets`), made of URL-safe characters, commas, colons and dots: nothing in it needs
    JSON escaping, so it is spliced in as is."""
    packet = event_packet(event, data, None)
    return packet[:-1] + b',"' if with_offset else packet


def ws_text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame carrying `payload`."""
    return frame(TEXT, payload)


def eio_message_frame(sio_packet: bytes) -> bytes:
    """The WebSocket frame of an Engine.IO MESSAGE carrying a Socket.IO packet."""
    return frame(TEXT, b"4" + sio_packet)
