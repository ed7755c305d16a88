"""Issue 2, the gateway core, against a real `gateway` process and the real socket.io-client.

Every test reads a line of CONTRACT.md ("Running it", "Socket.IO surface", "Operating it") and
checks it from outside: handshakes and their refusals, rooms per role, the ack, unknown events,
expiry while connected, CORS and the WebSocket Origin check, POST /api/emit, health and
metrics, `gateway --dev` and bad settings.

Most tests share one replica (in-memory bus, the default without REDIS_URL) started once for
the module; each test uses its own user ids, and compares counters before and after. Tests
that need other settings start their own replica (`start_gateway`). Both transports are exercised on the main paths.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from tests.e2e.conftest import StartGateway
from tests.support.checks import scrape, wait_until
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
ORIGIN = "http://localhost:5173"
SECOND_ORIGIN = "https://app.example.com"
FOREIGN_ORIGIN = "https://evil.example.net"
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}
BOTH = pytest.mark.parametrize("transport", list(TRANSPORTS))
COINS = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}
# Isolation: how long a socket that must receive nothing is watched, once the ones that must
# receive have received (they were sent the same emit, so anything misrouted is due by then).
QUIET = 0.5

BASE_ENV = {
    "JWT_SECRET": SECRET,
    "PUBLISH_API_KEY": API_KEY,
    "FRONTEND_URL": f"{ORIGIN},{SECOND_ORIGIN}",
    "DRAIN_SECONDS": "0",
    # Many handshakes from 127.0.0.1 in a few seconds: the per-IP limit is not tested here.
    "HANDSHAKE_RATE_PER_IP": "10000",
}


# -- helpers ---------------------------------------------------------------------------------


def uid() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def token(sub: Any = None, **kwargs: Any) -> str:
    return make_token(SECRET, uid() if sub is None else sub, **kwargs)




def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body); an HTTP error status is returned."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
        finally:
            exc.close()


def emit_http(gw: GatewayProcess, body: Any, *, key: str | None = API_KEY,
              raw: bytes | None = None, auth: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    status, _, data = http("POST", gw.url + "/api/emit",
                           raw if raw is not None else json.dumps(body).encode(), headers)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode("utf-8", "replace")


def connect(clients: NodeClients, name: str, gw: GatewayProcess, tok: str | None,
            transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    clients.connect(name, gw.ns_url, token=tok, transports=TRANSPORTS[transport], **opts)
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record
    return record


def refusal(clients: NodeClients, name: str, gw: GatewayProcess, tok: Any,
            transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    clients.connect(name, gw.ns_url, token=tok, transports=TRANSPORTS[transport], **opts)
    record = clients.wait_connected(name)
    assert record["type"] == "connect_error", record
    return record


def rooms_of(clients: NodeClients, name: str) -> list[str]:
    ack = clients.emit(name, "subscribe:notifications")
    assert ack["ok"] is True, ack
    assert set(ack) == {"ok", "rooms"}, ack
    rooms: list[str] = ack["rooms"]
    assert len(rooms) == len(set(rooms)), f"a room is listed twice: {rooms}"
    return rooms


def unsigned(claims: dict[str, Any]) -> str:
    """A JWT with `alg: none` and no signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def ws_upgrade_status(gw: GatewayProcess, origin: str | None) -> int:
    """Status of a raw WebSocket upgrade of /socket.io/ (101 when accepted)."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    lines = [
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1",
        f"Host: {gw.host}:{gw.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    assert match, f"no HTTP status line in {head[:200]!r}"
    return int(match.group(1))


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    """One replica for the module: in-memory bus, a publish key, two allowed origins."""
    replica = GatewayProcess(BASE_ENV, name="core")
    try:
        replica.start().wait_ready()
        yield replica
    finally:
        replica.stop()


@pytest.fixture(autouse=True)
def shared_log(gw: GatewayProcess) -> Iterator[None]:
    """Show the shared replica's log lines of the test when it fails (pytest prints captured
    output only for failures)."""
    seen = len(gw.log_text())
    yield
    print(f"-- shared replica log during the test:\n{gw.log_text()[seen:][-20000:]}")


# -- handshake -------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("prefix", ["", "Bearer "])
def test_handshake_with_auth_token(node_clients: NodeClients, gw: GatewayProcess,
                                   transport: str, prefix: str) -> None:
    user = uid()
    record = connect(node_clients, "a", gw, prefix + token(user), transport)
    assert record["recovered"] is False
    assert record["sid"]
    assert node_clients.state("a")["connected"] is True
    assert rooms_of(node_clients, "a") == [f"user:{user}"]


@BOTH
def test_handshake_with_authorization_header(node_clients: NodeClients, gw: GatewayProcess,
                                             transport: str) -> None:
    user = uid()
    connect(node_clients, "a", gw, None, transport,
            extraHeaders={"Authorization": f"Bearer {token(user)}"})
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    status, body = emit_http(gw, {"event": "coins:earned", "user": user, "data": COINS})
    assert status == 200, body
    [event] = node_clients.wait_events("a", "coins:earned", 1)
    assert event.payload == COINS


def test_integer_sub_and_user_id_claim(node_clients: NodeClients, gw: GatewayProcess) -> None:
    number = secrets.randbelow(10**12) + 10**6
    connect(node_clients, "int", gw, token(number))
    assert rooms_of(node_clients, "int") == [f"user:{number}"]
    status, _ = emit_http(gw, {"event": "coins:earned", "user": str(number), "data": COINS})
    assert status == 200
    assert node_clients.wait_events("int", "coins:earned", 1)[0].payload == COINS

    other = uid()
    tok = make_token(SECRET, None, userId=other)  # no sub: userId is the user id
    connect(node_clients, "userId", gw, f"Bearer {tok}")
    assert rooms_of(node_clients, "userId") == [f"user:{other}"]


@pytest.mark.parametrize("sub", ["auth0|5f7c8ec7c33c6c004bbafe82", "jane+tag@example.com"])
def test_any_non_empty_string_is_a_user_id(node_clients: NodeClients, gw: GatewayProcess,
                                           sub: str) -> None:
    # CONTRACT: "`sub` (or `userId`) is the user id: a non-empty string, or an integer".
    # Identity providers issue such subs (Auth0: "auth0|...", e-mail addresses with a tag).
    connect(node_clients, "a", gw, make_token(SECRET, sub))
    assert rooms_of(node_clients, "a") == [f"user:{sub}"]
    status, body = emit_http(gw, {"event": "coins:earned", "user": sub, "data": COINS})
    assert status == 200, body
    assert node_clients.wait_events("a", "coins:earned", 1)[0].payload == COINS


def _payload(**claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"role": "student", "iat": now, "exp": now + 3600, **claims}


REFUSALS: dict[str, tuple[Callable[[], Any], str]] = {
    # name: (what goes in auth.token, None for no auth at all; the expected code)
    "no_auth": (lambda: None, "token_missing"),
    "bad_signature": (lambda: make_token("x" * 64, uid()), "token_invalid"),
    "bad_signature_bearer": (lambda: "Bearer " + make_token("x" * 64, uid()), "token_invalid"),
    "alg_none": (lambda: unsigned(_payload(sub=uid())), "token_invalid"),
    "alg_none_bearer": (lambda: "Bearer " + unsigned(_payload(sub=uid())), "token_invalid"),
    "alg_not_configured_hs512": (
        lambda: jwt.encode(_payload(sub=uid()), SECRET, algorithm="HS512"), "token_invalid"),
    "garbage": (lambda: "garbage", "token_invalid"),
    "garbage_three_parts": (lambda: "Bearer abc.def.ghi", "token_invalid"),
    "truncated": (lambda: token()[:-10], "token_invalid"),
    "not_a_string": (lambda: 12345, "token_invalid"),
    "sub_object": (lambda: make_token(SECRET, {"id": 1}), "token_invalid"),
    "sub_list": (lambda: make_token(SECRET, [1, 2]), "token_invalid"),
    "sub_float": (lambda: make_token(SECRET, 4.5), "token_invalid"),
    "sub_empty": (lambda: make_token(SECRET, ""), "token_invalid"),
    "no_user_id": (lambda: make_token(SECRET, None), "token_invalid"),
    "user_id_object": (lambda: make_token(SECRET, None, userId={"id": 1}), "token_invalid"),
    "expired": (lambda: token(exp_in=-30), "token_expired"),
    "expired_bearer": (lambda: "Bearer " + token(exp_in=-30), "token_expired"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_handshake_refusals(node_clients: NodeClients, gw: GatewayProcess, case: str) -> None:
    build, code = REFUSALS[case]
    record = refusal(node_clients, "a", gw, build())
    assert record["message"] == "unauthorized"
    assert record["data"] == {"code": code}
    assert record["retrying"] is False, "a refused client must not retry by itself"
    node_clients.assert_no_event("a", within=0.2)
    assert node_clients.state("a")["connected"] is False
    assert not [r for r in node_clients.log("a") if r["type"] == "connect"]


@BOTH
@pytest.mark.parametrize(("case", "code"), [("missing", "token_missing"), ("invalid", "token_invalid"),
                                            ("expired", "token_expired")])
def test_handshake_refusals_on_each_transport(node_clients: NodeClients, gw: GatewayProcess,
                                              transport: str, case: str, code: str) -> None:
    tok = {"missing": None, "invalid": make_token("y" * 64, uid()), "expired": token(exp_in=-5)}[case]
    record = refusal(node_clients, "a", gw, tok, transport)
    assert (record["message"], record["data"]) == ("unauthorized", {"code": code})


def test_empty_auth_object_is_token_missing(node_clients: NodeClients, gw: GatewayProcess) -> None:
    record = refusal(node_clients, "a", gw, None, auth={})
    assert (record["message"], record["data"]) == ("unauthorized", {"code": "token_missing"})


def test_header_with_a_bad_token_is_refused(node_clients: NodeClients, gw: GatewayProcess) -> None:
    bad = make_token("z" * 64, uid())
    record = refusal(node_clients, "a", gw, None, extraHeaders={"Authorization": f"Bearer {bad}"})
    assert (record["message"], record["data"]) == ("unauthorized", {"code": "token_invalid"})


def test_audience_and_issuer_are_checked_when_set(node_clients: NodeClients,
                                                  start_gateway: StartGateway) -> None:
    replica = start_gateway({**BASE_ENV, "JWT_AUDIENCE": "notifications", "JWT_ISSUER": "https://auth.example"})
    good = {"aud": "notifications", "iss": "https://auth.example"}
    cases = {
        "good": (good, None),
        "no_aud": ({"iss": good["iss"]}, "token_invalid"),
        "wrong_aud": ({**good, "aud": "billing"}, "token_invalid"),
        "no_iss": ({"aud": good["aud"]}, "token_invalid"),
        "wrong_iss": ({**good, "iss": "https://evil.example"}, "token_invalid"),
    }
    for name, (claims, code) in cases.items():
        node_clients.connect(name, replica.ns_url, token=make_token(SECRET, uid(), **claims),
                             transports=["websocket"])
        record = node_clients.wait_connected(name)
        if code is None:
            assert record["type"] == "connect", (name, record)
        else:
            assert record["type"] == "connect_error", (name, record)
            assert (record["message"], record["data"]) == ("unauthorized", {"code": code}), name


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_tokens_and_no_key_confusion(node_clients: NodeClients, start_gateway: StartGateway,
                                                tmp_path: Any, kind: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256"
                    else ec.generate_private_key(ec.SECP256R1()))
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(pem)
    env = {k: v for k, v in BASE_ENV.items() if k != "JWT_SECRET"}
    replica = start_gateway({**env, "JWT_PUBLIC_KEY_FILE": str(key_file)})
    user = uid()
    now = int(time.time())
    claims = {"sub": user, "role": "teacher", "iat": now, "exp": now + 600}
    node_clients.connect("good", replica.ns_url, token="Bearer " + jwt.encode(claims, private, algorithm=kind),
                         transports=["websocket"])
    assert node_clients.wait_connected("good")["type"] == "connect"
    assert sorted(rooms_of(node_clients, "good")) == sorted([f"user:{user}", f"teacher:{user}"])

    # HS256 signed with the public key as the HMAC secret: the classic key confusion
    forged = _hmac_jwt(claims, pem)
    record = refusal(node_clients, "forged", replica, forged)
    assert record["data"] == {"code": "token_invalid"}
    other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256"
             else ec.generate_private_key(ec.SECP256R1()))
    record = refusal(node_clients, "other-key", replica, jwt.encode(claims, other, algorithm=kind))
    assert record["data"] == {"code": "token_invalid"}
    record = refusal(node_clients, "none", replica, unsigned(claims))
    assert record["data"] == {"code": "token_invalid"}


def _hmac_jwt(claims: dict[str, Any], key: bytes) -> str:
    """HS256 by hand (PyJWT refuses a PEM as an HMAC key, which is what an attacker bypasses)."""
    import hashlib
    import hmac

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    signing = f"{part(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{part(json.dumps(claims).encode())}"
    return f"{signing}.{part(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


# -- rooms and the ack -----------------------------------------------------------------------


ROLES: dict[str, tuple[dict[str, Any], Callable[[str, list[str]], list[str]]]] = {
    # name: (token claims, expected rooms from (user, classroom ids))
    "student": ({"role": "student"}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "default_role": ({"role": None}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "unknown_role": ({"role": "superuser"}, lambda u, c: [f"user:{u}", *(f"classroom:{x}" for x in c)]),
    "teacher": ({"role": "teacher"},
                lambda u, c: [f"user:{u}", f"teacher:{u}", *(f"classroom:{x}" for x in c)]),
    "admin": ({"role": "admin"}, lambda u, c: [f"user:{u}", "admin:all", *(f"classroom:{x}" for x in c)]),
}


@BOTH
@pytest.mark.parametrize("role", list(ROLES))
def test_rooms_for_each_role(node_clients: NodeClients, gw: GatewayProcess, transport: str,
                             role: str) -> None:
    user = uid()
    number = secrets.randbelow(10**9)
    text = f"c-{uuid.uuid4().hex[:6]}"
    claims, expected = ROLES[role]
    tok = make_token(SECRET, user, classrooms=[number, text], **claims)
    record = connect(node_clients, "a", gw, tok, transport)
    rooms = rooms_of(node_clients, "a")
    assert sorted(rooms) == sorted(expected(user, [str(number), text]))
    assert record["sid"] not in rooms, "the socket's own id is not a room of the contract"


def test_rooms_without_classrooms_and_with_duplicates(node_clients: NodeClients,
                                                      gw: GatewayProcess) -> None:
    user, other = uid(), uid()
    connect(node_clients, "none", gw, make_token(SECRET, user, classrooms=None))
    assert rooms_of(node_clients, "none") == [f"user:{user}"]
    connect(node_clients, "dupes", gw, make_token(SECRET, other, classrooms=[7, "7", 7]))
    assert sorted(rooms_of(node_clients, "dupes")) == ["classroom:7", f"user:{other}"]


def test_subscribe_ack_with_and_without_payload(node_clients: NodeClients, gw: GatewayProcess) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user, classrooms=["k1"]))
    expected = {"ok": True, "rooms": [f"user:{user}", "classroom:k1"]}
    for args in ((), ({},), ({"since": "x"},), ("anything",)):
        ack = node_clients.emit("a", "subscribe:notifications", *args)
        assert ack["ok"] is True, (args, ack)
        assert sorted(ack["rooms"]) == sorted(expected["rooms"]), (args, ack)


def test_each_room_receives_only_what_is_emitted_to_it(node_clients: NodeClients,
                                                       gw: GatewayProcess) -> None:
    classroom = f"k{uuid.uuid4().hex[:8]}"
    student, teacher, admin, outsider = uid(), uid(), uid(), uid()
    connect(node_clients, "student", gw, token(student, classrooms=[classroom]))
    connect(node_clients, "teacher", gw, token(teacher, role="teacher", classrooms=[classroom]))
    connect(node_clients, "admin", gw, token(admin, role="admin"), "polling")
    connect(node_clients, "outsider", gw, token(outsider, classrooms=["elsewhere"]))

    def emit(target: dict[str, Any], n: int) -> None:
        status, body = emit_http(gw, {"event": "notification:read", **target,
                                      "data": {"notificationId": f"n{n}", "readAt": "2024-01-01T00:00:00Z"}})
        assert status == 200, body

    emit({"room": f"teacher:{teacher}"}, 1)
    emit({"room": "admin:all"}, 2)
    emit({"room": f"classroom:{classroom}"}, 3)
    emit({"user": student}, 4)
    emit({"all": True}, 5)
    expected = {"student": ["n3", "n4", "n5"], "teacher": ["n1", "n3", "n5"], "admin": ["n2", "n5"],
                "outsider": ["n5"]}
    for name, ids in expected.items():
        events = node_clients.wait_events(name, "notification:read", len(ids))
        assert [e.payload["notificationId"] for e in events] == ids, name
    for name, ids in expected.items():
        node_clients.assert_no_event(name, within=QUIET / 4, allowed=len(ids))


def test_a_client_cannot_put_itself_in_a_room(node_clients: NodeClients, gw: GatewayProcess) -> None:
    user, victim = uid(), uid()
    connect(node_clients, "a", gw, token(user))
    for event, payload in (("join", "admin:all"), ("joinRoom", {"room": f"user:{victim}"}),
                           ("subscribe", {"rooms": ["admin:all"]})):
        assert node_clients.emit("a", event, payload) == {"ok": False, "error": "unknown_event"}
    # asking subscribe:notifications for rooms does not grant them either
    node_clients.emit("a", "subscribe:notifications", {"rooms": ["admin:all", f"user:{victim}"]})
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    for target in ({"room": "admin:all"}, {"user": victim}, {"room": "classroom:lobby"}):
        status, _ = emit_http(gw, {"event": "coins:earned", **target, "data": COINS})
        assert status == 200
    node_clients.assert_no_event("a", within=QUIET)


# -- client events ---------------------------------------------------------------------------


@BOTH
def test_unknown_events_are_refused_and_counted(node_clients: NodeClients, gw: GatewayProcess,
                                                transport: str) -> None:
    connect(node_clients, "a", gw, token(), transport)
    before = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    names = ["hello", "notification:new", "coins:earned", "subscribe:notification"]
    for name in names:
        assert node_clients.emit("a", name, {"x": 1}) == {"ok": False, "error": "unknown_event"}
    assert node_clients.emit("a", "no:payload") == {"ok": False, "error": "unknown_event"}
    after = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    assert after - before == len(names) + 1
    # refused, not dropped: the socket stays connected and usable
    assert node_clients.state("a")["connected"] is True
    assert rooms_of(node_clients, "a")


@BOTH
def test_unknown_events_without_ack_are_refused_silently(node_clients: NodeClients,
                                                         gw: GatewayProcess, transport: str) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user), transport)
    before = sample(scrape(gw), "ws_errors_total", kind="unknown_event")
    for i in range(3):
        node_clients.emit("a", f"silent:{i}", {"i": i}, ack=False)
    # one client's events are handled in order: once this is acked, the three were handled
    assert rooms_of(node_clients, "a") == [f"user:{user}"]
    node_clients.assert_no_event("a", within=QUIET)
    assert [r["type"] for r in node_clients.log("a")] == ["connect"]
    assert sample(scrape(gw), "ws_errors_total", kind="unknown_event") - before == 3


def test_rate_limited_events_are_refused_with_the_same_shape(node_clients: NodeClients,
                                                              start_gateway: StartGateway) -> None:
    replica = start_gateway({**BASE_ENV, "RATE_LIMIT_EVENTS": "0.1", "RATE_LIMIT_BURST": "3",
                             "RATE_LIMIT_DISCONNECT_AFTER": "1000"})
    node_clients.connect("a", replica.ns_url, token=token(), transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    acks = [node_clients.emit("a", "subscribe:notifications") for _ in range(6)]
    assert [a["ok"] for a in acks[:3]] == [True, True, True]
    assert acks[3:] == [{"ok": False, "error": "rate_limited"}] * 3
    assert sample(scrape(replica), "ws_errors_total", kind="rate_limited") == 3
    assert node_clients.state("a")["connected"] is True


# -- expiry while connected ------------------------------------------------------------------


def _expiring_token(seconds: int, user: str) -> tuple[str, int]:
    exp = int(time.time()) + seconds
    return make_token(SECRET, user, exp_in=None, exp=exp), exp


@BOTH
def test_token_expiry_drops_the_socket(node_clients: NodeClients, gw: GatewayProcess,
                                       transport: str) -> None:
    user = uid()
    tok, exp = _expiring_token(3, user)
    connect(node_clients, "a", gw, tok, transport)
    assert time.time() < exp - 1, "the handshake took too long for this test to mean anything"
    # JWT_LEEWAY is 0: dropped within a second of exp.
    dropped = node_clients.wait_disconnected("a", timeout=max(0.1, exp + 2.0 - time.time()))
    seen = time.time()
    assert seen >= exp - 0.1, f"dropped {exp - seen:.2f} s before the token expired"
    assert dropped["reason"] == "io server disconnect"
    assert dropped["retrying"] is False
    node_clients.assert_no_event("a", within=0.3)
    assert node_clients.state("a")["connected"] is False
    assert not [r for r in node_clients.log("a") if r["type"] == "connect"][1:], "it came back"


def test_token_expiry_honours_the_leeway(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    leeway = 2
    replica = start_gateway({**BASE_ENV, "JWT_LEEWAY": str(leeway)})
    # expired a second ago, within the leeway: accepted at the handshake
    late = make_token(SECRET, uid(), exp_in=-1)
    node_clients.connect("late", replica.ns_url, token=late, transports=["websocket"])
    assert node_clients.wait_connected("late")["type"] == "connect"

    tok, exp = _expiring_token(1, uid())
    node_clients.connect("a", replica.ns_url, token=tok, transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    # still there after exp, while exp + leeway has not passed
    time.sleep(max(0.0, exp + 0.5 - time.time()))
    assert node_clients.state("a")["connected"] is True, "dropped before exp + leeway"
    dropped = node_clients.wait_disconnected("a", timeout=max(0.1, exp + leeway + 2.0 - time.time()))
    assert time.time() >= exp + leeway - 0.1
    assert dropped["reason"] == "io server disconnect"
    late_drop = node_clients.wait_disconnected("late", timeout=5)
    assert late_drop["reason"] == "io server disconnect"


# -- CORS and origins ------------------------------------------------------------------------


POLL_OPEN = "/socket.io/?EIO=4&transport=polling"


@pytest.mark.parametrize("origin", [ORIGIN, SECOND_ORIGIN])
def test_polling_from_an_allowed_origin_gets_cors_with_credentials(gw: GatewayProcess,
                                                                   origin: str) -> None:
    status, headers, body = http("GET", gw.url + POLL_OPEN, headers={"Origin": origin})
    assert status == 200, body
    assert body.startswith(b"0{"), body  # the Engine.IO open packet
    assert headers.get("access-control-allow-origin") == origin
    assert headers.get("access-control-allow-credentials") == "true"

    status, headers, _ = http("OPTIONS", gw.url + POLL_OPEN, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status in (200, 204)
    assert headers.get("access-control-allow-origin") == origin
    assert headers.get("access-control-allow-credentials") == "true"


def test_polling_from_another_origin_gets_no_cors_grant(gw: GatewayProcess) -> None:
    status, headers, _ = http("GET", gw.url + POLL_OPEN, headers={"Origin": FOREIGN_ORIGIN})
    granted = headers.get("access-control-allow-origin")
    assert granted not in (FOREIGN_ORIGIN, "*"), (status, headers)


def test_requests_without_origin_are_allowed(gw: GatewayProcess) -> None:
    status, _, body = http("GET", gw.url + POLL_OPEN)
    assert status == 200, body
    assert body.startswith(b"0{")
    assert ws_upgrade_status(gw, None) == 101


def test_websocket_upgrade_origin_check(gw: GatewayProcess) -> None:
    assert ws_upgrade_status(gw, ORIGIN) == 101
    assert ws_upgrade_status(gw, SECOND_ORIGIN) == 101
    assert ws_upgrade_status(gw, FOREIGN_ORIGIN) != 101
    assert ws_upgrade_status(gw, "null") != 101


@BOTH
def test_real_client_from_an_allowed_origin(node_clients: NodeClients, gw: GatewayProcess,
                                            transport: str) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user), transport,
            extraHeaders={"Origin": ORIGIN}, withCredentials=True)
    status, _ = emit_http(gw, {"event": "coins:earned", "user": user, "data": COINS})
    assert status == 200
    assert node_clients.wait_events("a", "coins:earned", 1)[0].payload == COINS


def test_real_client_websocket_from_another_origin_is_refused(node_clients: NodeClients,
                                                              gw: GatewayProcess) -> None:
    node_clients.connect("a", gw.ns_url, token=token(), transports=["websocket"],
                         extraHeaders={"Origin": FOREIGN_ORIGIN}, reconnection=False)
    outcome = node_clients.wait_connected("a")
    assert outcome["type"] == "connect_error", outcome
    assert not [r for r in node_clients.log("a") if r["type"] == "connect"]


@BOTH
def test_real_client_without_origin(node_clients: NodeClients, gw: GatewayProcess,
                                    transport: str) -> None:
    # Node's socket.io-client sends no Origin header unless told to: a mobile app, a server.
    connect(node_clients, "a", gw, token(), transport)


# -- POST /api/emit --------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer ", API_KEY])
def test_emit_requires_the_publish_key(node_clients: NodeClients, gw: GatewayProcess,
                                       auth: str | None) -> None:
    user = uid()
    connect(node_clients, "a", gw, token(user))
    body = {"event": "coins:earned", "user": user, "data": COINS}
    status, _ = emit_http(gw, body, key=None, auth=auth)
    assert status == 401
    node_clients.assert_no_event("a", within=QUIET)


BAD_EMITS: dict[str, tuple[Any, str | None]] = {
    # name: (body, a word the error message must contain, or None)
    "not_json": (b"{not json", None),
    "array": ([1, 2], None),
    "no_event": ({"user": "1", "data": {}}, "event"),
    "event_not_string": ({"event": 5, "user": "1", "data": {}}, "event"),
    "bad_event_name": ({"event": "bad name!", "user": "1", "data": {}}, None),
    "reserved_event": ({"event": "connect", "user": "1", "data": {}}, None),
    "long_event_name": ({"event": "e" * 65, "user": "1", "data": {}}, None),
    "no_data": ({"event": "coins:earned", "user": "1"}, "data"),
    "no_target": ({"event": "coins:earned", "data": COINS}, None),
    "two_targets": ({"event": "coins:earned", "user": "1", "room": "classroom:1", "data": COINS}, None),
    "room_too_long": ({"event": "coins:earned", "room": "quiz:" + "9" * 296, "data": COINS}, "300"),
    "room_no_id": ({"event": "coins:earned", "room": "user:", "data": COINS}, None),
    "room_bad_char": ({"event": "coins:earned", "room": "classroom:a\tb", "data": COINS}, None),
    "room_not_string": ({"event": "coins:earned", "room": ["user:1"], "data": COINS}, None),
    "admin_other": ({"event": "coins:earned", "room": "admin:x", "data": COINS}, None),
    "user_object": ({"event": "coins:earned", "user": {"id": 1}, "data": COINS}, None),
    "all_not_true": ({"event": "coins:earned", "all": "yes", "data": COINS}, None),
    "strict_not_boolean": ({"event": "coins:earned", "user": "1", "data": COINS, "strict": "yes"}, "strict"),
    # the schemas of the contract events are checked when the producer asks (`"strict": true`)
    "coins_amount_type": ({"event": "coins:earned", "user": "1", "strict": True,
                           "data": {**COINS, "amount": "fifty"}}, "amount"),
    "coins_missing_field": ({"event": "coins:earned", "user": "1", "strict": True,
                             "data": {"amount": 5, "reason": "x"}}, "newBalance"),
    "rank_bad_level": ({"event": "rank:promoted", "user": "1", "strict": True, "data": {
        "oldRank": {"name": "a", "level": "one"}, "newRank": {"name": "b", "level": 2},
        "xpRequired": 10}}, "level"),
}


@pytest.mark.parametrize("case", list(BAD_EMITS))
def test_emit_refuses_a_bad_request_with_a_message(gw: GatewayProcess, case: str) -> None:
    body, word = BAD_EMITS[case]
    raw = body if isinstance(body, bytes) else None
    status, answer = emit_http(gw, None if raw is not None else body, raw=raw)
    assert status == 400, answer
    assert isinstance(answer, dict), answer
    assert answer.get("ok") is False
    message = " ".join(str(answer.get(k, "")) for k in ("detail", "message", "error"))
    assert message.strip(), f"no message saying what is wrong: {answer}"
    if word is not None:
        assert word in message, f"the message does not name {word!r}: {answer}"


def test_emit_refuses_an_oversized_payload(gw: GatewayProcess) -> None:
    big = {"event": "custom:big", "user": "1", "data": {"blob": "x" * (70 * 1024)}}
    status, answer = emit_http(gw, big)
    assert status in (400, 413), answer


@BOTH
def test_emit_delivers_to_a_user_a_room_and_everyone(node_clients: NodeClients, gw: GatewayProcess,
                                                     transport: str) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = f"k{uuid.uuid4().hex[:8]}"
    connect(node_clients, "alice", gw, token(alice, classrooms=[room]), transport)
    connect(node_clients, "alice2", gw, token(alice), transport)  # a second tab
    connect(node_clients, "bob", gw, token(bob, classrooms=[room]), transport)
    connect(node_clients, "carol", gw, token(carol), transport)

    payload = {**COINS, "extra": {"nested": [1, "two"]}, "ünïcode": "✓"}
    status, answer = emit_http(gw, {"event": "coins:earned", "user": alice, "data": payload})
    assert status == 200, answer
    assert answer["ok"] is True
    assert isinstance(answer["offset"], str)
    assert answer["offset"]
    for name in ("alice", "alice2"):
        [event] = node_clients.wait_events(name, "coins:earned", 1)
        assert event.payload == payload, "extra keys pass through unchanged"
    for name in ("bob", "carol"):
        node_clients.assert_no_event(name, within=QUIET)

    achievement = {"achievementId": "a1", "name": "First", "description": "d", "icon": "i.png",
                   "xpReward": 10}
    status, answer = emit_http(gw, {"event": "achievement:unlocked", "room": f"classroom:{room}",
                                    "data": achievement})
    assert status == 200, answer
    for name in ("alice", "bob"):
        [event] = node_clients.wait_events(name, "achievement:unlocked", 1)
        assert event.payload == achievement
    for name in ("alice2", "carol"):
        node_clients.assert_no_event(name, "achievement:unlocked", within=QUIET)

    announcement = {"text": "maintenance at 22:00"}
    status, answer = emit_http(gw, {"event": "system:announcement", "all": True, "data": announcement})
    assert status == 200, answer
    for name in ("alice", "alice2", "bob", "carol"):
        [event] = node_clients.wait_events(name, "system:announcement", 1)
        assert event.payload == announcement
    for name, total in (("alice", 3), ("alice2", 2), ("bob", 2), ("carol", 1)):
        node_clients.assert_no_event(name, within=QUIET / 4, allowed=total)


def test_emit_offsets_grow(gw: GatewayProcess) -> None:
    offsets = []
    for n in range(3):
        status, answer = emit_http(gw, {"event": "coins:earned", "user": uid(), "data": {**COINS, "n": n}})
        assert status == 200
        offsets.append(answer["offset"])
    assert len(set(offsets)) == 3


def test_emit_endpoint_is_off_without_a_key(node_clients: NodeClients,
                                            start_gateway: StartGateway) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != "PUBLISH_API_KEY"}
    replica = start_gateway(env)
    user = uid()
    node_clients.connect("a", replica.ns_url, token=token(user), transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    for key in (None, "", API_KEY):
        status, _ = emit_http(replica, {"event": "coins:earned", "user": user, "data": COINS},
                              key=key, auth=None if key is not None else "")
        assert status in (403, 404, 405, 501), status
    node_clients.assert_no_event("a", within=QUIET)


# -- health and metrics ----------------------------------------------------------------------


def test_healthz_and_readyz(gw: GatewayProcess) -> None:
    assert gw.http_get("/healthz")[0] == 200
    assert gw.http_get("/readyz")[0] == 200


def test_metrics_count_connections_messages_and_latency(node_clients: NodeClients,
                                                        start_gateway: StartGateway) -> None:
    # A replica of its own: sockets of other tests (a polling client that went away without a
    # word lingers until its ping timeout) would blur the gauge.
    gw = start_gateway(BASE_ENV)
    user, other = uid(), uid()
    before = scrape(gw)
    assert ("ws_connections_active", ()) in before
    connect(node_clients, "a1", gw, token(user))
    connect(node_clients, "a2", gw, token(user), "polling")
    connect(node_clients, "b", gw, token(other))
    assert sample(scrape(gw), "ws_connections_active") == 3
    status, _ = emit_http(gw, {"event": "coins:earned", "user": user, "data": COINS})
    assert status == 200
    for name in ("a1", "a2"):
        node_clients.wait_events(name, "coins:earned", 1)
    after = scrape(gw)
    sent = "ws_messages_sent_total"
    assert sample(after, sent, event="coins:earned") - sample(before, sent, event="coins:earned") == 2
    latency = "ws_latency_seconds_count"
    assert sample(after, latency) - sample(before, latency) == 2
    status, body = gw.http_get("/metrics")
    assert status == 200
    assert "# TYPE ws_connections_active gauge" in body
    assert "# TYPE ws_messages_sent_total counter" in body or "# TYPE ws_messages_sent counter" in body
    assert "# TYPE ws_errors_total counter" in body or "# TYPE ws_errors counter" in body
    assert "# TYPE ws_latency_seconds histogram" in body
    status, _ = emit_http(gw, {"event": f"custom:{user}", "user": user, "data": {}})
    assert status == 200
    node_clients.wait_events("a1", f"custom:{user}", 1)
    status, body = gw.http_get("/metrics")
    assert user not in body, "a metric label holds a user id"
    assert other not in body, "a metric label holds a user id"
    node_clients.disconnect("b")
    wait_until(lambda: sample(scrape(gw), "ws_connections_active") == 2, 5,
               "ws_connections_active follows a disconnect")


# -- running it ------------------------------------------------------------------------------


JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _dev_token(replica: GatewayProcess) -> str:
    found = wait_until(lambda: JWT_RE.search(replica.log_text()), 10, "`gateway --dev` prints a token")
    return str(found.group(0))


def test_dev_mode_prints_a_working_token(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    replica = start_gateway({}, args=["--dev"])
    tok = _dev_token(replica)
    claims = jwt.decode(tok, options={"verify_signature": False})
    user = str(claims.get("sub", claims.get("userId")))
    node_clients.connect("a", replica.ns_url, token=f"Bearer {tok}", transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    assert f"user:{user}" in rooms_of(node_clients, "a")
    node_clients.connect("bare", replica.ns_url, token=tok, transports=["polling"])
    assert node_clients.wait_connected("bare")["type"] == "connect"

    # the publish key it prints works too
    key = re.search(r"publish key:\s+(\S+)", replica.log_text())
    assert key, "`gateway --dev` prints a publish key"
    status, answer = emit_http(replica, {"event": "coins:earned", "user": user, "data": COINS},
                               key=key.group(1))
    assert status == 200, answer
    for name in ("a", "bare"):
        assert node_clients.wait_events(name, "coins:earned", 1)[0].payload == COINS


def test_dev_mode_secret_is_ephemeral(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    first = start_gateway({}, args=["--dev"])
    second = start_gateway({}, args=["--dev"])
    tok = _dev_token(first)
    assert _dev_token(second) != tok
    record = refusal(node_clients, "a", second, tok)
    assert record["data"] == {"code": "token_invalid"}, "two dev replicas share a guessable secret"


def test_help_documents_every_setting() -> None:
    from gateway.config import SETTINGS

    replica = GatewayProcess({}, args=["--help"], name="help")
    try:
        replica.start()
        assert replica.wait_exit(20) == 0
    finally:
        replica.stop()
    text = replica.log_text()
    missing = [s.env for s in SETTINGS if s.env not in text]
    assert not missing, f"`gateway --help` does not mention {missing}"


def test_python_m_gateway_runs_it(node_clients: NodeClients) -> None:
    replica = GatewayProcess(BASE_ENV, command=[sys.executable, "-m", "gateway"], name="python-m")
    try:
        replica.start().wait_ready()
        connect(node_clients, "a", replica, token())
    finally:
        replica.stop()


BAD_SETTINGS: dict[str, tuple[dict[str, str], tuple[str, ...], str]] = {
    # name: (environment, flags, the name the message must contain)
    "no_secret": ({}, (), "JWT_SECRET"),
    "port_not_a_number": ({"JWT_SECRET": SECRET, "PORT": "eighty"}, (), "PORT"),
    "port_out_of_range": ({"JWT_SECRET": SECRET, "PORT": "70000"}, (), "PORT"),
    "negative_leeway": ({"JWT_SECRET": SECRET, "JWT_LEEWAY": "-3"}, (), "JWT_LEEWAY"),
    "leeway_not_a_number": ({"JWT_SECRET": SECRET, "JWT_LEEWAY": "soon"}, (), "JWT_LEEWAY"),
    "frontend_not_an_origin": ({"JWT_SECRET": SECRET, "FRONTEND_URL": "localhost 5173"}, (), "FRONTEND_URL"),
    "redis_bad_scheme": ({"JWT_SECRET": SECRET, "REDIS_URL": "http://127.0.0.1:6379"}, (), "REDIS_URL"),
    "recovery_window": ({"JWT_SECRET": SECRET, "RECOVERY_WINDOW": "-1"}, (), "RECOVERY_WINDOW"),
    "drain_seconds": ({"JWT_SECRET": SECRET, "DRAIN_SECONDS": "forever"}, (), "DRAIN_SECONDS"),
    "ping_interval": ({"JWT_SECRET": SECRET, "PING_INTERVAL": "fast"}, (), "PING_INTERVAL"),
    "ping_timeout": ({"JWT_SECRET": SECRET, "PING_TIMEOUT": "-5"}, (), "PING_TIMEOUT"),
    "algorithm_none": ({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": "none"}, (), "JWT_ALGORITHMS"),
    "public_key_not_pem": ({"JWT_PUBLIC_KEY": "not a key"}, (), "JWT_PUBLIC_KEY"),
    "public_key_file_missing": ({"JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, (), "JWT_PUBLIC_KEY_FILE"),
    "flag_port": ({"JWT_SECRET": SECRET}, ("--port", "x"), "--port"),
    "flag_leeway": ({"JWT_SECRET": SECRET}, ("--jwt-leeway", "-1"), "--jwt-leeway"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_bad_setting_stops_the_start_naming_it(case: str) -> None:
    env, flags, name = BAD_SETTINGS[case]
    replica = GatewayProcess(env, args=flags, name=f"bad-{case}")
    try:
        replica.start()
        code = replica.wait_exit(20)
    finally:
        replica.stop()
    output = replica.log_text()
    assert code != 0, output
    assert name in output, f"the message does not name {name}: {output!r}"
    assert "Traceback" not in output, output
