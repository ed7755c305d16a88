"""The request head of a connection, read before anyone else sees it: is it an Engine.IO
WebSocket request we answer ourselves, or something for aiohttp?

The decision is made on the request line alone (`route`), so every other request goes to aiohttp
as soon as its first line is in, untouched. Only a candidate's head is parsed here (`parse_head`),
strictly: a head that is not plain HTTP/1.1 is refused with a 400 naming what is wrong. The
headers are kept only while the handshake runs; a connection keeps none of them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

MAX_HEAD = 16384  # bytes; aiohttp's limit for one header line is 8190
ENGINEIO_PATH = b"/socket.io/"
_CANDIDATE = b"GET " + ENGINEIO_PATH


class BadRequest(Exception):
    """A request head that is not well-formed HTTP/1.1: answered 400 and the connection closed."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Headers(dict[str, str]):
    """Header values by lower-case name, looked up case-insensitively (as aiohttp's are)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class RequestHead:
    """What the native path needs of a request: method, path, query, headers, the peer's address
    (`remote`, as aiohttp's `request.remote`). It is what admission reads (`RequestView`)."""

    __slots__ = ("headers", "method", "path", "query", "remote")

    def __init__(self, method: str, path: str, query: dict[str, str], headers: Headers,
                 remote: str | None = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.remote = remote

    def header(self, name: str) -> str:
        """The header's value ('' when absent)."""
        return self.headers.get(name) or ""


def route(buffer: bytes) -> bool | None:
    """True: a candidate for the native WebSocket path (a GET of the Engine.IO path asking for the
    websocket transport); False: aiohttp's; None: the request line is not complete yet."""
    end = buffer.find(b"\r\n")
    if end < 0:
        if not (buffer.startswith(_CANDIDATE) or _CANDIDATE.startswith(buffer)):
            return False
        return None if len(buffer) < MAX_HEAD else False
    line = buffer[:end]
    if not line.startswith(_CANDIDATE):
        return False
    target = line[4:line.rfind(b" ")]
    query = target[len(ENGINEIO_PATH):]
    return query[:1] == b"?" and b"transport=websocket" in query


def head_end(buffer: bytes) -> int:
    """The offset just past the head's blank line, or -1 while it has not arrived."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(head: bytes) -> RequestHead:
    """Parse a complete request head (request line, header lines, blank line)."""
    try:
        text = head.decode("latin-1") if head.isascii() else head.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request head is not UTF-8") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("unsupported HTTP version")
    if not method.isalpha() or not method.isupper():
        raise BadRequest("malformed method")
    path, _, qs = target.partition("?")
    if not path.startswith("/") or any(c in target for c in "\x00\t\x7f"):
        raise BadRequest("malformed request target")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue  # the blank line(s) at the end
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            raise BadRequest("malformed header line")
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise BadRequest("control character in a header value")
        key = name.lower()
        value = value.strip(" \t")
        if dict.__contains__(headers, key):
            if key in ("host", "sec-websocket-key", "authorization", "upgrade", "sec-websocket-version"):
                raise BadRequest(f"repeated {name} header")
            dict.__setitem__(headers, key, f"{dict.__getitem__(headers, key)}, {value}")
        else:
            dict.__setitem__(headers, key, value)
    query: dict[str, str] = {}
    for key, value in parse_qsl(qs, keep_blank_values=True):
        query.setdefault(key, value)  # the first value wins, as with aiohttp's `request.query.get`
    return RequestHead(method, path, query, headers)
