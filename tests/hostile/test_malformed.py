"""Malformed packets over a raw WebSocket, one connection per case, against one replica: each
is closed, refused with the protocol's answer, or ignored (and the connection still works);
a real socket.io-client user keeps receiving an event after every case; the replica logs no
error and never dies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from publisher import Publisher
from tests.hostile.rawws import BINARY, CLOSE, NS, PING, TEXT, Closed, RawWS, connected
from tests.hostile.support import COINS, EVENT, base_env, log_problems, metric, token, uid
from tests.support import node_env
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.sio_client import NodeClients

SECRET = "m" * 64
CONTINUATION = 0x0
CLOSED = "closed"
IGNORED = "ignored"


@dataclass
class Case:
    name: str
    after_connect: bool
    frames: list[tuple[str, Any]]
    expect: str | tuple[str, ...]  # CLOSED, IGNORED, or the prefixes of the answers, in order
    also: frozenset[Any] = field(default_factory=frozenset)  # other acceptable outcomes


def t(text: str) -> tuple[str, Any]:
    return ("text", text)


def b(data: bytes) -> tuple[str, Any]:
    return ("binary", data)


def raw(opcode: int, payload: bytes, **kw: Any) -> tuple[str, Any]:
    return ("frame", (opcode, payload, kw))


def valid_connect(user: str = "q") -> str:
    return json.dumps({"token": token(SECRET, uid(user))})


UNAUTHORIZED = f'44{NS},{{"message":"unauthorized","data":{{"code":'
UNKNOWN = f'43{NS},1[{{"ok":false,"error":"unknown_event"}}]'
NINES = "9" * 99

CASES = [
    # -- not Engine.IO / not Socket.IO
    Case("garbage text", False, [t("hello")], CLOSED),
    Case("empty text frame", False, [t("")], CLOSED),
    Case("engine.io MESSAGE with garbage", False, [t("4hello")], CLOSED),
    Case("unknown socket.io type 7", True, [t(f"47{NS},")], CLOSED),
    Case("socket.io type is a letter", True, [t(f"4x{NS},")], CLOSED),
    Case("CONNECT_ERROR from the client", True, [t(f"44{NS},{{}}")], CLOSED),
    Case("engine.io base64 message", True, [t("bAAEC")], CLOSED),
    # -- namespaces
    Case("CONNECT to another namespace", False, [t("40/nope,")], ('44/nope,{"message":"Invalid namespace"}',)),
    Case("CONNECT to the main namespace", False, [t("40")], ('44{"message":"Invalid namespace"}',)),
    Case("CONNECT with a query in the namespace", False, [t(f"40{NS}?x=1,{valid_connect()}")], (f'40{NS},{{"sid"',)),
    Case("EVENT before CONNECT", False, [t(f'42{NS},1["subscribe:notifications"]')], IGNORED),
    Case("EVENT to the main namespace before CONNECT", False, [t('421["subscribe:notifications"]')], IGNORED),
    Case("EVENT to the main namespace after CONNECT", True, [t('421["subscribe:notifications"]')], IGNORED),
    Case("a second CONNECT", True, [t(f"40{NS},{valid_connect()}")], IGNORED),
    # -- CONNECT payloads
    Case("CONNECT auth is a string", False, [t(f'40{NS},"Bearer xyz"')], (UNAUTHORIZED + '"token_missing"}}',)),
    Case("CONNECT auth is a list", False, [t(f'40{NS},["a"]')], (UNAUTHORIZED + '"token_missing"}}',)),
    Case("CONNECT auth is a number", False, [t(f"40{NS},42")], (UNAUTHORIZED + '"token_missing"}}',)),
    Case("CONNECT auth is null", False, [t(f"40{NS},null")], (UNAUTHORIZED + '"token_missing"}}',)),
    Case("CONNECT token is an object", False, [t(f'40{NS},{{"token":{{"a":1}}}}')],
         (UNAUTHORIZED + '"token_invalid"}}',)),
    Case("CONNECT token is garbage", False, [t(f'40{NS},{{"token":"{"x" * 5000}"}}')],
         (UNAUTHORIZED + '"token_invalid"}}',)),
    Case("CONNECT with pid and offset of the wrong types", False,
         [t(f'40{NS},' + json.dumps({"token": token(SECRET, uid()), "pid": {"x": 1}, "offset": [1]}))],
         (f'40{NS},{{"sid"',)),
    Case("CONNECT with a 10 kB pid", False,
         [t(f'40{NS},' + json.dumps({"token": token(SECRET, uid()), "pid": "p" * 10_000, "offset": "o" * 10_000}))],
         (f'40{NS},{{"sid"',)),
    Case("truncated CONNECT", False, [t(f'40{NS},{{"token":"ab')], CLOSED),
    # -- ack ids
    Case("ack id of 26 digits", True, [t(f'42{NS},{"9" * 26}["subscribe:notifications"]')],
         (f'43{NS},{"9" * 26}[{{"ok":true',)),
    Case("ack id of 99 digits", True, [t(f'42{NS},{NINES}["subscribe:notifications"]')],
         (f'43{NS},{NINES}[{{"ok":true',)),
    Case("ack id of 150 digits", True, [t(f'42{NS},{"9" * 150}["subscribe:notifications"]')], CLOSED),
    # -- EVENT payloads
    Case("truncated JSON", True, [t(f'42{NS},1["subscribe:notif')], CLOSED),
    Case("JSON nested 5000 deep", True, [t(f'42{NS},1["subscribe:notifications",{"[" * 5000}{"]" * 5000}]')],
         CLOSED),
    Case("EVENT data is an object", True, [t(f'42{NS},1{{"a":1}}')], CLOSED),
    Case("EVENT data is a string", True, [t(f'42{NS},1"subscribe:notifications"')], (UNKNOWN,)),
    Case("EVENT with no arguments", True, [t(f"42{NS},1[]")], (UNKNOWN,)),
    Case("EVENT name null", True, [t(f"42{NS},1[null]")], (UNKNOWN,)),
    Case("EVENT name an object", True, [t(f'42{NS},1[{{"a":1}}]')], (UNKNOWN,)),
    Case("EVENT named connect", True, [t(f'42{NS},1["connect"]')], (UNKNOWN,)),
    Case("EVENT named disconnect", True, [t(f'42{NS},1["disconnect"]'), t(f'42{NS},2["subscribe:notifications"]')],
         (UNKNOWN, f'43{NS},2[{{"ok":true')),
    Case("EVENT named subscribe with 60 kB of payload", True,
         [t(f'42{NS},1["subscribe:notifications","{"x" * 60_000}"]')],
         (f'43{NS},1[{{"ok":false,"error":"invalid_payload"}}]',)),
    Case("ACK the server never asked for", True, [t(f'43{NS},5["x"]')], IGNORED),
    # -- binary
    Case("binary frame before CONNECT", False, [b(b"\x00\x01\x02")], CLOSED),
    Case("a CONNECT as a binary frame", False, [b(b"40/notifications,{}")], CLOSED),
    Case("binary frame after CONNECT", True, [b(b"\xff\xfe")], CLOSED),
    Case("BINARY_EVENT before CONNECT", False, [t(f'451-{NS},["x",{{"_placeholder":true,"num":0}}]')], CLOSED),
    # No client event carries binary data: refusing binary packets outright is as good as handling them.
    Case("BINARY_EVENT with its attachment", True,
         [t(f'451-{NS},1["subscribe:notifications",{{"_placeholder":true,"num":0}}]'), b(b"\x01")],
         (f'43{NS},1[{{"ok":true',), frozenset({CLOSED})),
    Case("BINARY_EVENT placeholder out of range", True,
         [t(f'451-{NS},1["x",{{"_placeholder":true,"num":5}}]'), b(b"\x01")], CLOSED),
    Case("BINARY_EVENT placeholder num a string", True,
         [t(f'451-{NS},1["x",{{"_placeholder":true,"num":"0"}}]'), b(b"\x01")], CLOSED),
    Case("BINARY_ACK from the client", True, [t(f'461-{NS},1[{{"_placeholder":true,"num":0}}]'), b(b"\x01")],
         IGNORED, frozenset({CLOSED})),
    # -- Engine.IO packets a WebSocket client does not send
    Case("engine.io UPGRADE", True, [t("5")], IGNORED),
    Case("engine.io NOOP", True, [t("6")], IGNORED),
    Case("engine.io 2probe", True, [t("2probe")], IGNORED),
    Case("engine.io CLOSE", True, [t("1")], CLOSED),
    # -- WebSocket framing
    Case("invalid UTF-8 in a text frame", True, [raw(TEXT, b"\xff\xfe\xfd")], CLOSED),
    Case("reserved opcode", True, [raw(0x3, b"x")], CLOSED),
    Case("control frame over 125 bytes", True, [raw(PING, b"x" * 200)], CLOSED),
    Case("fragmented control frame", True, [raw(PING, b"x", fin=False)], CLOSED),
    Case("continuation without a first fragment", True, [raw(CONTINUATION, b"abc")], CLOSED),
    Case("frame header announcing 2**62 bytes", True, [("header", 2**62)], CLOSED),
    Case("close frame", True, [raw(CLOSE, b"\x03\xe8")], CLOSED),
    Case("unmasked client frame", True, [raw(TEXT, b"6", mask=False)], CLOSED, frozenset({IGNORED})),
    Case("binary frame with a text packet inside", True, [raw(BINARY, f'42{NS},1["x"]'.encode())], CLOSED,
         frozenset({(UNKNOWN,)})),
]


@pytest.fixture(scope="module")
def replica(shared_redis: RedisServer) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(base_env(SECRET, REDIS_URL=shared_redis.url, MAX_CONNECTIONS_PER_USER="1000"),
                        name="malformed").start()
    try:
        gw.wait_ready(20)
        yield gw
    finally:
        gw.stop()
        print(f"-- replica log (tail):\n{gw.log_tail(40)}")


@pytest.fixture(scope="module")
def good(replica: GatewayProcess) -> Iterator[tuple[NodeClients, str]]:
    node_env.ensure_node_modules()
    user = uid("good")
    with NodeClients() as clients:
        clients.connect("good", replica.ns_url, token=token(SECRET, user), transports=["websocket"])
        assert clients.wait_connected("good", timeout=10)["type"] == "connect"
        yield clients, user


@pytest.fixture(scope="module")
def module_pub(shared_redis: RedisServer) -> Iterator[Publisher]:
    with Publisher(shared_redis.url) as publisher:
        yield publisher


def send(ws: RawWS, frames: list[tuple[str, Any]]) -> None:
    for kind, data in frames:
        if kind == "text":
            ws.send_text(data)
        elif kind == "binary":
            ws.send_binary(data)
        elif kind == "frame":
            opcode, payload, kw = data
            ws.send_frame(opcode, payload, **kw)
        elif kind == "header":  # a text frame header and a mask, and nothing of the payload
            ws.sock.sendall(bytes([0x81, 0xFF]) + int(data).to_bytes(8, "big") + b"\x00\x00\x00\x00")


def observe(ws: RawWS, answers: int, quiet: float = 0.5) -> list[str] | str:
    """The texts the server sends (at least `answers` of them, waiting up to 5 s each, then
    whatever comes within `quiet`), or CLOSED."""
    texts: list[str] = []
    try:
        while len(texts) < answers:
            texts.append(ws.recv_text(5))
        while True:
            texts.append(ws.recv_text(quiet))
    except Closed:
        return CLOSED
    except TimeoutError:
        return texts


def still_works(ws: RawWS, after_connect: bool) -> None:
    """An ignored packet leaves a usable connection: answered as before."""
    if after_connect:
        ws.send_text(f'42{NS},77["subscribe:notifications"]')
        assert ws.recv_text(5).startswith(f'43{NS},77[{{"ok":true')
    else:
        assert ws.sio_connect({"token": token(SECRET, uid())}).startswith(f'40{NS},{{"sid"')


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_packet(case: Case, replica: GatewayProcess, good: tuple[NodeClients, str],
                          module_pub: Publisher) -> None:
    clients, user = good
    if case.after_connect:
        ws, _ = connected(replica.port, token(SECRET, uid("bad")))
    else:
        ws = RawWS.connect(replica.port)
        ws.eio_open()
    with ws:
        with contextlib.suppress(OSError):  # closed while sending: judged below
            send(ws, case.frames)
        expected_answers = 0 if isinstance(case.expect, str) else len(case.expect)
        seen = observe(ws, expected_answers)
        if seen == CLOSED:
            outcome: Any = CLOSED
        elif not seen:
            outcome = IGNORED
        else:
            outcome = tuple(seen)
        acceptable = {case.expect, *case.also}
        if isinstance(outcome, tuple):
            prefixes = [p for p in acceptable if isinstance(p, tuple) and len(p) == len(outcome)]
            assert any(all(o.startswith(p) for o, p in zip(outcome, ps, strict=True)) for ps in prefixes), \
                f"{case.name}: got {[o[:120] for o in outcome]}, expected {case.expect}"
        else:
            assert outcome in acceptable, f"{case.name}: {outcome}, expected {case.expect}"
        if outcome == IGNORED:
            still_works(ws, case.after_connect)

    # whatever that was, the well-behaved user is served
    n = len(clients.events("good", EVENT))
    module_pub.emit(EVENT, {**COINS, "n": n}, user=user).result()
    got = clients.wait_events("good", EVENT, n + 1, timeout=10)
    assert [e.payload["n"] for e in got] == list(range(n + 1))
    assert replica.alive()


def test_after_every_malformed_case_the_replica_is_clean(replica: GatewayProcess,
                                                         good: tuple[NodeClients, str]) -> None:
    """Runs after the cases (same module): no error logged, only the good client left."""
    wait_until(lambda: metric(replica, "ws_connections_active") == 1, 10, "only the good client connected")
    assert log_problems(replica) == []
    assert replica.alive()
