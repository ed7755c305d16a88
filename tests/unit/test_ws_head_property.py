"""The request-head reader of the native accept path (gateway/ws/head.py), fuzzed: a well-formed
upgrade request is read exactly; anything else is either left to aiohttp (`route` says False)
or refused with BadRequest naming the problem, never another exception."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.admission import RequestView
from gateway.ws.handshake import check_upgrade
from gateway.ws.head import MAX_HEAD, BadRequest, head_end, parse_head, route

token_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
names = st.text(token_chars, min_size=1, max_size=20)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)


@st.composite
def upgrade_heads(draw: st.DrawFn) -> tuple[bytes, dict[str, str], dict[str, str]]:
    query = {"EIO": "4", "transport": "websocket"}
    query.update(draw(st.dictionaries(st.sampled_from(["t", "sid", "x"]), st.text(token_chars, max_size=10),
                                      max_size=2)))
    headers = {"Host": "h:1", "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    taken = {h.lower() for h in headers}
    extra = draw(st.lists(st.tuples(names.filter(lambda n: n.lower() not in taken), values),
                          unique_by=lambda pair: pair[0].lower(), max_size=6))  # one header, any case
    headers.update(extra)
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    lines = [f"GET /socket.io/?{qs} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), query, headers


@settings(max_examples=200)
@given(upgrade_heads(), st.integers(0, 400))
def test_a_well_formed_upgrade_is_read_exactly(case: tuple[bytes, dict[str, str], dict[str, str]], cut: int) -> None:
    raw, query, headers = case
    cut = min(cut, len(raw) - 1)
    first = route(raw[:cut])
    assert first in (True, None)  # a prefix never sends a candidate to aiohttp
    assert route(raw) is True
    assert head_end(raw[:cut]) == -1
    end = head_end(raw)
    assert end == len(raw)
    head = parse_head(raw[:end])
    assert head.method == "GET"
    assert head.path == "/socket.io/"
    assert head.query == query
    for name, value in headers.items():
        assert head.header(name) == value
        assert head.headers.get(name.upper()) == value  # case-insensitive, as aiohttp's
    assert check_upgrade(head) == "dGhlIHNhbXBsZSBub25jZQ=="
    view: RequestView = head  # what admission reads
    assert view.query.get("transport") == "websocket"


@given(st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n",
                        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n", b"GET /metrics HTTP/1.1\r\n",
                        b"OPTIONS /socket.io/ HTTP/1.1\r\n", b"GET /api/emit", b"PUT ", b"\x16\x03\x01"]))
def test_everything_else_goes_to_aiohttp_at_the_first_bytes_that_tell(line: bytes) -> None:
    assert route(line) is False


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_after_a_candidate_request_line_is_bad_request_or_a_head(garbage: bytes) -> None:
    raw = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n" + garbage + b"\r\n\r\n"
    assert route(raw) is True
    end = head_end(raw)
    refused: BadRequest | None = None
    try:
        head = parse_head(raw[:end])
    except BadRequest as exc:
        refused = exc
    if refused is not None:
        assert refused.reason
        assert refused.status == 400
        return
    assert head.method == "GET"
    if "websocket" in head.header("upgrade").lower() and head.header("sec-websocket-version") == "13":
        return  # garbage that happens to be an upgrade's headers: check_upgrade decides on the key
    with pytest.raises(BadRequest):
        check_upgrade(head)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_route_without_error(data: bytes) -> None:
    assert route(data) in (True, False, None)
    end = head_end(data)
    if end > 0:
        with contextlib.suppress(BadRequest):
            parse_head(data[:end])


@pytest.mark.parametrize(("head", "why"), [
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nNo colon here\r\n\r\n", "malformed header line"),
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n Folded: x\r\n\r\n", "malformed header line"),
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/2\r\n\r\n", "unsupported HTTP version"),
    (b"GET /socket.io/?EIO=4&transport=websocket\r\n\r\n", "malformed request line"),
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nA: b\r\nA : c\r\n\r\n", "malformed header line"),
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: a\r\nupgrade: b\r\n\r\n", "repeated"),
    (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nA: \xff\xfe\r\n\r\n", "not UTF-8"),
])
def test_malformed_heads_say_what_is_wrong(head: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        parse_head(head)


def test_a_request_line_longer_than_the_limit_goes_to_aiohttp() -> None:
    assert route(b"GET /socket.io/?" + b"a" * MAX_HEAD) is False
