"""The request head of a connection, read before anyone else sees it: is it an Engine.IO
WebSocket request we answer ourselves, or something for aiohttp?

The decision is made on the request line alone (`route`), so every other request goes to aiohttp
as soon as its first line is in, untouched. Only a candidate's head is parsed here (`parse_head`),
strictly: a head that is not plain HTTP/1.1 is refused with a 400 naming what is wrong. The
headers are kept only while the handshake runs; a connection keeps none of them.
"""

from __future__ import annotations

import re
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

    __slots__ = ("headers", "method", "path", "query", "remote", "version")

    def __init__(self, method: str, path: str, query: dict[str, str], headers: Headers,
                 remote: str | None = None, version: str = "HTTP/1.1") -> None:
        self.version = version
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
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request head is not UTF-8") from None
    line_end = text.find("\r\n")
    parts = text[:line_end].split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("unsupported HTTP version")
    if not method.isalpha() or not method.isupper():
        raise BadRequest("malformed method")
    if not target.startswith("/") or _TARGET_BAD.search(target):
        raise BadRequest("malformed request target")
    block = text[line_end + 2:]
    if _HEADER_BLOCK.fullmatch(block) is None:
        bad = _CONTROL.search(block)
        raise BadRequest("control character in a header value" if bad else "malformed header line")
    pairs = [line.partition(":") for line in block[:-4].split("\r\n")] if len(block) > 2 else []
    headers = Headers((name.lower(), value.strip(" \t")) for name, _, value in pairs)
    if len(headers) != len(pairs):
        headers = _merged(pairs)
    path, _, qs = target.partition("?")
    return RequestHead(method, path, _query(qs), headers, version=version)


# A header block: lines `token: value` (no control character but tab in the value), CRLF each,
# then the blank line. Checked by one regular expression, in C, instead of per character.
_HEADER_BLOCK = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")
_SINGLE = frozenset({"host", "sec-websocket-key", "authorization", "upgrade", "sec-websocket-version"})


def _merged(pairs: list[tuple[str, str, str]]) -> Headers:
    """Headers where a name repeats: values joined with commas (RFC 9110), except the names a
    request may carry once."""
    headers = Headers()
    for name, _, raw in pairs:
        key = name.lower()
        value = raw.strip(" \t")
        if dict.__contains__(headers, key):
            if key in _SINGLE:
                raise BadRequest(f"repeated {name} header")
            dict.__setitem__(headers, key, f"{dict.__getitem__(headers, key)}, {value}")
        else:
            dict.__setitem__(headers, key, value)
    return headers


def _query(qs: str) -> dict[str, str]:
    """The query's parameters; the first value of a repeated one wins, as with aiohttp's
    `request.query.get`."""
    query: dict[str, str] = {}
    if not qs:
        return query
    if "%" in qs or "+" in qs:
        for key, value in parse_qsl(qs, keep_blank_values=True):
            query.setdefault(key, value)
        return query
    for pair in qs.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            query.setdefault(key, value)
    return query
