"""The opening handshake of RFC 6455, server side, and the plain HTTP answers of the native path.

A request is checked the way aiohttp's `WebSocketResponse.prepare` checks it (GET, HTTP/1.1,
`Upgrade: websocket`, `Connection: upgrade`, version 13, a key of 16 bytes in base64) and answered
101 with the accept key. No subprotocol and no extension is offered: the client (socket.io-client)
asks for none, and permessage-deflate would rule out one frame shared by every recipient.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from http import HTTPStatus

from gateway.ws.head import BadRequest, RequestHead

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324 - RFC 6455


def check_upgrade(head: RequestHead) -> str:
    """The client's Sec-WebSocket-Key, once the request is a valid WebSocket upgrade;
    BadRequest saying what is missing otherwise."""
    if head.method != "GET":
        raise BadRequest("a WebSocket upgrade must be a GET")
    if head.version != "HTTP/1.1":
        raise BadRequest("a WebSocket upgrade must be HTTP/1.1")
    if "websocket" not in head.header("upgrade").lower():
        raise BadRequest("no 'Upgrade: websocket' header")
    if "upgrade" not in head.header("connection").lower():
        raise BadRequest("no 'Connection: upgrade' header")
    if head.header("sec-websocket-version") != "13":
        raise BadRequest("unsupported Sec-WebSocket-Version (13 expected)")
    key = head.header("sec-websocket-key")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise BadRequest("Sec-WebSocket-Key is not 16 bytes")
    except binascii.Error:
        raise BadRequest("Sec-WebSocket-Key is not base64") from None
    return key


def switching(key: str) -> bytes:
    """The 101 answer (and nothing else: no Date, no Server; a client needs none)."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer with a JSON body that ends the connection (the native path
    keeps no HTTP connection alive: a refused client opens a new one)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
