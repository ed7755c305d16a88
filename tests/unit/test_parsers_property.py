"""Property tests on every parser that reads outside input (issue 5, "Tests").

Each parser may accept or refuse; it may never fail any other way:

- tokens: `extract_token` and `Authenticator.authenticate` (HS256 fast path and the PyJWT path
  of a public key) give a string / an `Identity`, or `AuthError`, nothing else;
- the Redis envelope: `publisher.envelope.decode` gives an `Event`/`Control` or `EnvelopeError`;
- the HTTP publish body: `parse_emit` gives (event, data, room) or a `ValueError`; and
  `POST /api/emit` of an in-process replica answers 2xx or 4xx, never 5xx;
- Engine.IO and Socket.IO packets as the gateway receives them: a replica built with
  `create_app` runs in-process (aiohttp's `TestServer`, on a loop of its own thread, kept for
  the whole module so damage accumulates across examples); arbitrary text and binary frames go
  to it over a raw WebSocket, arbitrary bodies over long-polling POSTs, arbitrary query strings
  and headers to `/socket.io/`. After each example: no 5xx, no error logged by the replica and
  no exception left in its loop, a second well-behaved client still connects, is acknowledged
  and receives an event, and once every client is gone the replica holds nothing for them
  (Engine.IO sockets, Socket.IO sessions, pending handshakes, half-received binary packets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from gateway.app import GATEWAY, Gateway, create_app
from gateway.config import load_settings
from gateway.http.emit import parse_emit
from gateway.policy.auth import Authenticator, AuthError, extract_token
from gateway.policy.rooms import Identity
from publisher.envelope import Control, EnvelopeError, Event, decode

SECRET = "k" * 48
API_KEY = "publish-key-" + "x" * 20
NS = "/notifications"
T = TypeVar("T")

# -- JSON-ish values ---------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
# Python values a parser may meet after a JSON decoder, plus the odd ones orjson never gives.
any_values = st.one_of(json_values, st.binary(max_size=8), st.integers(), st.floats())


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- tokens ---------------------------------------------------------------------------------------


def _extract(auth: Any, header: str | None) -> None:
    try:
        token = extract_token(auth, header)
    except AuthError as exc:
        code = exc.code
        assert code in {"token_missing", "token_invalid"}
    else:
        assert isinstance(token, str)
        assert token
        assert token == token.strip()


@settings(max_examples=500, deadline=None)
@given(auth=any_values, header=st.one_of(st.none(), st.text(max_size=40)))
def test_extract_token_gives_a_string_or_auth_error(auth: Any, header: str | None) -> None:
    _extract(auth, header)


@settings(max_examples=200, deadline=None)
@given(auth=st.dictionaries(st.sampled_from(["token", "pid", "offset", "x"]), any_values, max_size=3),
       header=st.one_of(st.none(), st.text(max_size=20), st.just("Bearer "), st.just("bearer")))
def test_extract_token_from_auth_objects(auth: dict[str, Any], header: str | None) -> None:
    _extract(auth, header)


def _hmac_authenticator() -> Authenticator:
    return Authenticator(load_settings({"JWT_SECRET": SECRET}))


def _check_identity(identity: Identity) -> None:
    assert isinstance(identity, Identity)
    assert isinstance(identity.user_id, str)
    assert identity.user_id
    assert identity.role in {"student", "teacher", "admin"}
    assert all(isinstance(c, str) for c in identity.classrooms)
    assert identity.exp is None or isinstance(identity.exp, float)


def _authenticate(auth: Authenticator, token: str) -> None:
    try:
        identity = auth.authenticate(token)
    except AuthError as exc:
        code = exc.code
        assert code in {"token_invalid", "token_expired"}
    else:
        _check_identity(identity)


segments = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=30),
    st.text(max_size=12),
    st.binary(max_size=24).map(b64url),
    json_values.map(lambda v: b64url(orjson.dumps(v))),
)


@settings(max_examples=400, deadline=None)
@given(token=st.one_of(st.text(max_size=60), st.lists(segments, min_size=1, max_size=5).map(".".join)))
def test_authenticate_arbitrary_tokens_hmac(token: str) -> None:
    _authenticate(_hmac_authenticator(), token)


claims_strategy = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "sub": any_values, "userId": any_values,
            "role": st.one_of(st.sampled_from(["student", "teacher", "admin", "root"]), json_values),
            "classrooms": st.one_of(st.lists(json_scalars, max_size=4), json_values),
            "exp": st.one_of(st.integers(0, 2**40), json_values), "nbf": json_values, "iat": json_values,
            "aud": json_values, "iss": json_values,
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(claims=claims_strategy, header_extra=st.dictionaries(st.text(max_size=5), json_values, max_size=2),
       alg=st.sampled_from(["HS256", "HS384", "none", "RS256"]))
def test_authenticate_correctly_signed_arbitrary_claims(claims: Any, header_extra: dict[str, Any], alg: str) -> None:
    """The signature verifies, so the claims themselves are what is parsed."""
    import hashlib
    import hmac

    header = {**header_extra, "alg": alg, "typ": "JWT"}
    try:
        body = orjson.dumps(claims)
    except orjson.JSONEncodeError:
        assume(False)
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(body)}"
    digest = hashlib.sha384 if alg == "HS384" else hashlib.sha256
    signature = hmac.new(SECRET.encode(), signing_input.encode(), digest).digest()
    _authenticate(_hmac_authenticator(), f"{signing_input}.{b64url(signature)}")


_EC_KEY = ec.generate_private_key(ec.SECP256R1())
_EC_PUBLIC_PEM = _EC_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@settings(max_examples=200, deadline=None)
@given(token=st.one_of(st.text(max_size=60), st.lists(segments, min_size=1, max_size=4).map(".".join)),
       claims=claims_strategy)
def test_authenticate_public_key_path(token: str, claims: Any) -> None:
    """The PyJWT path (JWT_PUBLIC_KEY): garbage, and correctly signed arbitrary claims."""
    auth = Authenticator(load_settings({"JWT_PUBLIC_KEY": _EC_PUBLIC_PEM}))
    _authenticate(auth, token)
    try:
        payload = orjson.dumps(claims)
    except orjson.JSONEncodeError:
        return
    signed = jwt.api_jws.PyJWS().encode(payload, _EC_KEY, algorithm="ES256")
    _authenticate(auth, signed)


# -- the Redis envelope --------------------------------------------------------------------------

offsets = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}:[0-9]{1,15}-[0-9]{1,19}", fullmatch=True),
    st.text(max_size=30), json_values,
)
envelope_dicts = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), st.just(1.0), st.just(True), json_values),
        "k": st.one_of(st.sampled_from(["e", "join", "leave", "kick"]), json_values),
        "t": st.one_of(st.integers(0, 2**50), st.floats(allow_nan=False), json_values),
        "o": offsets,
        "ev": st.one_of(st.sampled_from(["coins:earned", "connect", "a" * 65]), json_values),
        "d": json_values,
        "r": st.one_of(st.none(), st.sampled_from(["user:1", ""]), json_values),
        "u": st.one_of(st.sampled_from(["1", ""]), json_values),
        "rooms": st.one_of(st.lists(st.text(max_size=10), max_size=3), json_values),
    },
)


def _decode_only_envelope_error(raw: bytes) -> None:
    try:
        message = decode(raw)
    except EnvelopeError:
        return
    assert isinstance(message, Event | Control)


@settings(max_examples=500, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     json_values.map(orjson.dumps)))
def test_envelope_decode_arbitrary_bytes(raw: bytes) -> None:
    _decode_only_envelope_error(raw)


@settings(max_examples=500, deadline=None)
@given(obj=envelope_dicts, cut=st.one_of(st.none(), st.integers(0, 200)))
def test_envelope_decode_envelope_shaped(obj: dict[str, Any], cut: int | None) -> None:
    raw = orjson.dumps(obj)
    _decode_only_envelope_error(raw if cut is None else raw[:cut])


@pytest.mark.parametrize("raw", [
    b"{" * 5000 + b"}" * 5000,  # nesting beyond orjson's limit
    b'{"v":1,"t":1,"o":"e:1-1","k":"e","ev":"x","d":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"v":1,"t":1,"o":"e:1-1","k":"e","ev":"x","d":1e999}',
    b'{"v":1,"t":1,"o":"e:1-1","k":"e","ev":"x","d":123456789012345678901234567890}',
    b'{"v":1,"t":NaN,"o":"e:1-1"}',
    b'{"v":1,"t":1,"o":"e:1-1","k":"e","ev":"x","d":"\xff\xfe"}',
    b"\x93\x00", b"", b"{", bytearray(b'{"v":1}'), memoryview(b'{"v":1}'),
])
def test_envelope_decode_corner_cases(raw: bytes) -> None:
    _decode_only_envelope_error(raw)


# -- the HTTP publish body ------------------------------------------------------------------------

emit_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "event": st.one_of(st.sampled_from(["coins:earned", "rank:promoted", "notification:new", "x:y",
                                                "connect", "", "a b"]), json_values),
            "data": st.one_of(json_values, st.just({"amount": 1, "reason": "r", "newBalance": 2})),
            "room": st.one_of(st.sampled_from(["user:1", "classroom:7", "admin:all", "admin:x", "user:"]),
                              json_values),
            "user": st.one_of(st.sampled_from(["1", 1, "a b", "x" * 200]), json_values),
            "all": st.one_of(st.booleans(), json_values),
        },
    ),
)


@settings(max_examples=600, deadline=None)
@given(body=emit_bodies, limit=st.sampled_from([1024, 65536]))
def test_parse_emit_gives_a_target_or_value_error(body: Any, limit: int) -> None:
    try:
        event, _data, room = parse_emit(body, limit)
    except ValueError:
        return
    assert isinstance(event, str)
    assert room is None or isinstance(room, str)


@pytest.mark.parametrize("body", [
    {"event": "x", "data": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "all": True},
    {"event": "x", "data": "a" * 70_000, "all": True},
    {"event": "x", "data": 2**60, "all": True},
    {"event": "x", "data": "\x00", "all": True},
    {"event": "x", "data": "\ud800", "all": True},
    {"event": "x", "data": {"\x07": 1}, "all": True},
    {"event": "x", "data": 1, "user": 10**5000},
    {"event": "x", "data": 1, "user": float("nan")},
    {"event": "x", "data": 1, "room": "user:1", "user": "1"},
    {"event": "coins:earned", "data": {"amount": True, "reason": "r", "newBalance": 1}, "all": True,
     "strict": True},
    {"event": "x", "data": 1, "all": True, "strict": "yes"},
    {"event": "x", "data": 1, "room": "admin:root"},
    {"event": "x", "data": 1, "room": "q" * 301},
])
def test_parse_emit_corner_cases(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_emit(body, 65536)


# -- an in-process replica ------------------------------------------------------------------------


class Replica:
    """A replica built by `create_app`, served by aiohttp's TestServer on a loop of its own
    thread. Coroutines are run there with `run()` (clients share the replica's loop). Errors
    the replica logs and exceptions its loop does not handle are collected in `problems`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.settings = load_settings(env)
        self.loop = asyncio.new_event_loop()
        self.problems: list[str] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="replica-loop", daemon=True)
        self.server: TestServer | None = None
        self.gateway: Gateway | None = None
        self._handler = _Collect(self.problems)

    def start(self) -> Replica:
        self.loop.set_exception_handler(self._loop_exception)
        self._thread.start()
        logging.getLogger().addHandler(self._handler)

        async def start() -> None:
            app = create_app(self.settings)
            self.gateway = app[GATEWAY]
            self.server = TestServer(app, host="127.0.0.1")
            await self.server.start_server()

        self.run(start())
        return self

    def stop(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.run(self.server.close(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def run(self, coro: Awaitable[T], timeout: float = 20) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.problems.append(f"loop: {context.get('message')} {context.get('exception')!r}")

    def take_problems(self) -> list[str]:
        out = list(self.problems)
        self.problems.clear()
        return out

    def held(self) -> dict[str, int]:
        """What the replica holds for clients, by kind."""
        gw = self.gateway
        assert gw is not None
        sio = gw.sio
        return {
            "eio_sockets": len(sio.eio.sockets),
            "registry": len(gw.core.registry),
            "rooms": len(gw.core.registry.rooms),
            "environ": len(sio.environ),
            "binary_packets": len(sio._binary_packet),
            "pending_handshakes": len(gw.admission._pending),
            "connecting": len(gw.core.connecting),
            "reasons": len(sio._reasons),
        }


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name in {"engineio.server", "gateway.engineio"} and (
            message.endswith("(further occurrences of this error will be logged with level INFO)")
            or message == "post request handler error"
        ):
            # python-engineio logs a client's mistake at ERROR once; and catches what its
            # POST handler raises (an unknown packet type is an IndexError there), answering 200.
            return
        self.sink.append(f"log {record.name}: {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture(scope="module")
def replica() -> Iterator[Replica]:
    env = {"JWT_SECRET": SECRET, "PUBLISH_API_KEY": API_KEY, "HANDSHAKE_RATE_PER_IP": "1000000",
           "MAX_CONNECTIONS_PER_USER": "100000", "FRONTEND_URL": "http://localhost:5173"}
    rep = Replica(env).start()
    try:
        yield rep
    finally:
        rep.stop()


def token_for(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


WS_PATH = "/socket.io/?EIO=4&transport=websocket"
QUIET = 0.15


async def _ws_open(session: aiohttp.ClientSession, replica: Replica) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(replica.url(WS_PATH), max_msg_size=0, autoping=True)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    assert msg.data.startswith("0{"), msg
    return ws


async def _next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> str:
    """The next Engine.IO text that is not a PING (answered), or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        if msg.data == "2":
            await ws.send_str("3")
            continue
        return str(msg.data)


async def well_behaved(replica: Replica, session: aiohttp.ClientSession) -> None:
    """Connects, is acknowledged, receives an event sent to its user."""
    user = f"good{uuid.uuid4().hex[:10]}"
    ws = await _ws_open(session, replica)
    try:
        await ws.send_str(f"40{NS},{orjson.dumps({'token': token_for(user)}).decode()}")
        reply = await _next_text(ws)
        assert reply.startswith(f"40{NS},{{"), reply
        assert '"sid"' in reply, reply
        await ws.send_str(f'42{NS},7["subscribe:notifications"]')
        ack = await _next_text(ws)
        assert ack.startswith(f"43{NS},7["), ack
        assert orjson.loads(ack[len(f"43{NS},7"):])[0]["ok"] is True, ack
        assert replica.gateway is not None
        await replica.gateway.service.send_to_user(user, "coins:earned",
                                                   {"amount": 1, "reason": "probe", "newBalance": 1})
        event = await _next_text(ws)
        assert event.startswith(f'42{NS},["coins:earned",'), event
    finally:
        await ws.close()


async def _drain(ws: aiohttp.ClientWebSocketResponse, quiet: float) -> str:
    """Read until the server closes the connection ("closed") or stays quiet ("open")."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return "open"
        if msg.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR}:
            return "closed"
        if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
            await ws.send_str("3")
    return "chatty"


async def _settled(replica: Replica, timeout: float = 3.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        held = replica.held()
        if not any(held.values()) or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.02)


def _after_example(replica: Replica) -> None:
    held = replica.run(_settled(replica))
    problems = replica.take_problems()
    assert not problems, problems
    assert not any(held.values()), f"the replica still holds, with every client gone: {held}"


# -- Engine.IO / Socket.IO over WebSocket -----------------------------------------------------------

namespaces = st.one_of(st.sampled_from(["", f"{NS},", "/,", "/nope,", f"{NS}?x=1,", f"{NS}", "/" * 3 + ","]),
                       st.text(max_size=10).map(lambda s: "/" + s + ","))
ack_ids = st.one_of(st.just(""), st.integers(0, 2**31).map(str), st.integers(1, 130).map(lambda n: "9" * n))
attachments = st.one_of(st.just(""), st.sampled_from(["1-", "0-", "2-", "9999999999-", "99999999999-", "-", "a-"]))
json_texts = st.one_of(
    json_values.map(lambda v: orjson.dumps(v).decode()),
    st.just('["subscribe:notifications"]'), st.just('["subscribe:notifications",{"a":1}]'),
    st.just('["x",{"_placeholder":true,"num":0}]'), st.just('["x",{"_placeholder":true,"num":5}]'),
    st.just('{"token":1}'), st.just('"Bearer x"'), st.just("[1,2"), st.just('{"token":'),
    st.just("1" * 400), st.just("[" * 3000), st.text(max_size=20),
)
sio_packets = st.builds(
    lambda kind, att, nsp, ack, body: f"4{kind}{att}{nsp}{ack}{body}",
    st.one_of(st.sampled_from("0123456"), st.sampled_from("789 x"), st.just("")),
    attachments, namespaces, ack_ids, json_texts,
)
# What a real client sends, with arbitrary arguments: the packets that get past the first checks.
plausible_packets = st.builds(
    lambda kind, ack, body: f"4{kind}{NS},{ack}{body}",
    st.sampled_from(["0", "1", "2", "2", "3", "5", "6"]), ack_ids,
    st.one_of(json_texts, st.lists(json_values, max_size=3).map(
        lambda args: orjson.dumps(["subscribe:notifications", *args]).decode())),
)
eio_texts = st.one_of(
    plausible_packets,
    sio_packets,
    st.sampled_from(["", "0", "1", "2", "3", "5", "6", "7", "b", "bQUJD", "2probe", "4", "40", "41", "44",
                     f"40{NS},", f"40{NS},[]", f"40{NS},\"tok\"", f"40{NS},123", f"40{NS},null",
                     f'42{NS},["subscribe:notifications"]', f"41{NS},"]),
    st.text(max_size=50),
)
frames = st.lists(
    st.one_of(eio_texts.map(lambda t: ("text", t)), plausible_packets.map(lambda t: ("text", t)),
              st.binary(max_size=64).map(lambda b: ("binary", b)), sio_packets.map(lambda t: ("binary", t.encode()))),
    min_size=1, max_size=8,
)


async def _ws_fuzz(replica: Replica, sequence: list[tuple[str, Any]], connect_first: bool) -> str:
    async with aiohttp.ClientSession() as session:
        ws = await _ws_open(session, replica)
        try:
            if connect_first:
                auth = orjson.dumps({"token": token_for("fuzz" + secrets.token_hex(4))}).decode()
                await ws.send_str(f"40{NS},{auth}")
                reply = await _next_text(ws)
                assert reply.startswith(f"40{NS},"), reply
            outcome = "open"
            for kind, data in sequence:
                if ws.closed:
                    outcome = "closed"
                    break
                with contextlib.suppress(ConnectionError):
                    if kind == "text":
                        await ws.send_str(data)
                    else:
                        await ws.send_bytes(data)
            if outcome != "closed":
                outcome = await _drain(ws, QUIET)
            # Whatever became of the attacker, others are served.
            await well_behaved(replica, session)
        finally:
            await ws.close()
    return outcome


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(sequence=frames, connect_first=st.booleans())
@example(sequence=[("text", f"40{NS},\"Bearer x\"")], connect_first=False)
@example(sequence=[("text", f'42{NS},["subscribe:notifications"]')], connect_first=False)
@example(sequence=[("text", f'42{NS},{"9" * 99}["subscribe:notifications"]')], connect_first=True)
@example(sequence=[("text", f'451-{NS},["x",{{"_placeholder":true,"num":0}}]')], connect_first=True)
@example(sequence=[("text", f'451-{NS},["x",{{"_placeholder":true,"num":0}}]'), ("binary", b"\x00")],
         connect_first=True)
@example(sequence=[("text", f'{"4" * 1}2{NS},["subscribe:notifications"')], connect_first=True)
@example(sequence=[("binary", b"\xff\xfe\xfd")], connect_first=True)
def test_websocket_frames_never_hurt_the_replica(replica: Replica, sequence: list[tuple[str, Any]],
                                                  connect_first: bool) -> None:
    outcome = replica.run(_ws_fuzz(replica, sequence, connect_first))
    event(f"attacker {outcome}")
    assert outcome in {"open", "closed"}, outcome
    _after_example(replica)


# -- Engine.IO over long-polling -------------------------------------------------------------------

polling_bodies = st.one_of(
    st.lists(eio_texts, min_size=1, max_size=5).map("\x1e".join).map(str.encode),
    st.binary(max_size=100),
    st.lists(eio_texts, min_size=17, max_size=20).map("\x1e".join).map(str.encode),
    st.sampled_from([b"d=" + b"40%2Fnotifications%2C", b"d=", b"1", b"1\x1e7", b"4" * 1000, b"\x1e",
                     b"b" + base64.b64encode(b"\x00\x01"), b"bnot-base64!"]),
)


async def _polling_session(session: aiohttp.ClientSession, replica: Replica) -> str:
    async with session.get(replica.url("/socket.io/?EIO=4&transport=polling")) as resp:
        assert resp.status == 200, resp.status
        body = await resp.text()
    assert body.startswith("0{"), body
    return str(orjson.loads(body[1:])["sid"])


async def _polling_fuzz(replica: Replica, body: bytes, connect_first: bool, headers: dict[str, str],
                        hung: list[bytes]) -> list[int]:
    statuses = []
    short = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession() as session:
        sid = await _polling_session(session, replica)
        url = replica.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}")
        if connect_first:
            packet = f"40{NS},{orjson.dumps({'token': token_for('pfuzz' + secrets.token_hex(4))}).decode()}"
            async with session.post(url, data=packet.encode(), timeout=short) as resp:
                statuses.append(resp.status)

        async def post(data: bytes, extra: dict[str, str]) -> int | None:
            try:
                async with session.post(url, data=data, headers=extra, timeout=short) as resp:
                    await resp.read()
                    return resp.status
            except TimeoutError:  # a refusal that waits for a poll (test_a_refused_polling_packet_is_answered)
                hung.append(data)
                return None

        async def get() -> int | None:
            with contextlib.suppress(TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.4)) as resp:
                    await resp.read()
                    return resp.status
            return None

        # A long-poll runs beside the POST, as a browser's does.
        answers = await asyncio.gather(post(body, headers), get())
        statuses += [s for s in answers if s is not None]
        answers = [await post(b"1", {})]  # leave: a CLOSE packet, whatever state the session is in
        statuses += [s for s in answers if s is not None]
        await get()
        await well_behaved(replica, session)
    return statuses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=polling_bodies, connect_first=st.booleans(),
       headers=st.fixed_dictionaries({}, optional={
           "Content-Type": st.sampled_from(["text/plain", "application/octet-stream", "x/y"]),
       }))
def test_polling_posts_never_hurt_the_replica(replica: Replica, body: bytes, connect_first: bool,
                                              headers: dict[str, str]) -> None:
    hung: list[bytes] = []
    statuses = replica.run(_polling_fuzz(replica, body, connect_first, headers, hung))
    assert hung == [], "a POST was never answered"
    assert all(s < 500 for s in statuses), statuses
    _after_example(replica)


async def _polling_leave_politely(replica: Replica, n: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            sid = await _polling_session(session, replica)
            url = replica.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}")
            packet = f"40{NS},{orjson.dumps({'token': token_for('bye' + secrets.token_hex(4))}).decode()}"
            async with session.post(url, data=packet.encode()) as resp:
                assert resp.status == 200
            async with session.get(url) as resp:
                assert (await resp.text()).startswith(f"40{NS},")
            async with session.post(url, data=b"1") as resp:  # CLOSE, as engine.io-client sends it
                assert resp.status == 200


def test_polling_sessions_that_end_are_forgotten(replica: Replica) -> None:
    replica.run(_polling_leave_politely(replica, 20))
    held = replica.run(_settled(replica, timeout=2.0))
    assert held["eio_sockets"] == 0, f"20 polling sessions ended, the replica still holds {held}"


async def _bad_packet_post(replica: Replica) -> str:
    async with aiohttp.ClientSession() as session:
        sid = await _polling_session(session, replica)
        url = replica.url(f"/socket.io/?EIO=4&transport=polling&sid={sid}")
        try:
            # "0" (OPEN) is not a packet a client sends: python-engineio refuses it and closes
            # the session; the answer must not wait for a poll that never comes.
            async with session.post(url, data=b"0", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return f"answered {resp.status}"
        except TimeoutError:
            return "no answer within 3 s"
        finally:
            with contextlib.suppress(TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    await resp.read()  # would release a stuck POST, for the next tests


def test_a_refused_polling_packet_is_answered(replica: Replica) -> None:
    outcome = replica.run(_bad_packet_post(replica))
    assert outcome.startswith("answered 4"), outcome


async def _one_well_behaved(replica: Replica) -> None:
    async with aiohttp.ClientSession() as session:
        await well_behaved(replica, session)


# -- HTTP requests to /socket.io/ -------------------------------------------------------------------

query_keys = st.sampled_from(["EIO", "transport", "sid", "j", "t", "b64", "xsid"])
query_values = st.one_of(st.sampled_from(["4", "3", "polling", "websocket", "", "0", "abc", "1e3"]),
                         st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=8))


async def _http_fuzz(replica: Replica, method: str, query: list[tuple[str, str]], headers: dict[str, str],
                     body: bytes) -> int:
    async with aiohttp.ClientSession() as session:
        url = replica.url("/socket.io/")
        try:
            async with session.request(method, url, params=query, headers=headers, data=body or None,
                                       timeout=aiohttp.ClientTimeout(total=3)) as resp:
                status = resp.status
                if status == 101:
                    return status
                await resp.read()
        except TimeoutError:
            status = 0  # a long-poll that waits: fine
        await well_behaved(replica, session)
    return status


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "DELETE"]),
       query=st.lists(st.tuples(query_keys, query_values), max_size=5),
       headers=st.fixed_dictionaries({}, optional={
           "Origin": st.sampled_from(["http://localhost:5173", "https://evil.example", "null", ""]),
           "Upgrade": st.sampled_from(["websocket", "WebSocket", "h2c", ""]),
           "Connection": st.sampled_from(["Upgrade", "keep-alive, Upgrade", "close"]),
           "Sec-WebSocket-Key": st.sampled_from(["dGhlIHNhbXBsZSBub25jZQ==", "x"]),
           "Sec-WebSocket-Version": st.sampled_from(["13", "8", "x"]),
           "X-Forwarded-For": st.sampled_from(["1.2.3.4", "garbage", "1.2.3.4, ::1", ", ,"]),
           "Authorization": st.sampled_from(["Bearer x", "Basic y", "Bearer " + "a" * 300]),
       }),
       body=st.binary(max_size=40))
def test_http_requests_to_the_engineio_endpoint_never_get_5xx(
    replica: Replica, method: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes,
) -> None:
    status = replica.run(_http_fuzz(replica, method, query, headers, body))
    assert status < 500, status
    # A request that opened a session leaves it to the handshake timeout: close what is open.
    replica.run(_close_all(replica))
    _after_example(replica)


async def _close_all(replica: Replica) -> None:
    assert replica.gateway is not None
    for sock in list(replica.gateway.sio.eio.sockets.values()):
        await sock.close(wait=False, abort=True)


# -- POST /api/emit ---------------------------------------------------------------------------------


async def _emit(replica: Replica, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(
        replica.url("/api/emit"), data=body, headers=headers,
    ) as resp:
        await resp.read()
        return resp.status


emit_raw_bodies = st.one_of(
    emit_bodies.map(orjson.dumps),
    st.binary(max_size=100),
    st.text(max_size=100).map(str.encode),
    st.sampled_from([b"", b"{", b"[" * 5000, b'{"event":"x","data":' + b"[" * 600 + b"]" * 600 + b',"all":true}',
                     b'{"event":"x","data":1e999,"all":true}', b'{"event":"x","data":"\\ud800","all":true}',
                     b'{"event":"x","data":123456789012345678901234567890,"all":true}',
                     b'{"event":"x","data":1,"user":"' + b"9" * 5000 + b'"}',
                     b'{"event":"x","data":"' + b"a" * 70_000 + b'","all":true}']),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=emit_raw_bodies,
       auth=st.sampled_from([f"Bearer {API_KEY}", f"bearer {API_KEY}", "Bearer wrong", "", "Bearer ", API_KEY]),
       content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x"]))
def test_http_emit_answers_2xx_or_4xx(replica: Replica, body: bytes, auth: str, content_type: str) -> None:
    headers = {"Content-Type": content_type}
    if auth:
        headers["Authorization"] = auth
    status = replica.run(_emit(replica, body, headers))
    assert 200 <= status < 500, status
    assert replica.take_problems() == []


# -- a sanity check of the harness itself -----------------------------------------------------------


def test_the_in_process_replica_serves_a_well_behaved_client(replica: Replica) -> None:
    replica.run(_one_well_behaved(replica))
    _after_example(replica)

