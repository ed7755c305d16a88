"""Handshakes and their refusals (docs/contract.md, "Socket.IO surface"): the token in `auth` or
in the Authorization header, with or without `Bearer `, the user id claims, every refusal with
its code on both transports, audience and issuer, public keys and no key confusion.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    BASE_ENV,
    BOTH,
    COINS,
    SECRET,
    connect,
    emit_http,
    refusal,
    rooms_of,
    token,
    uid,
)
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients


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


def unsigned(claims: dict[str, Any]) -> str:
    """A JWT with `alg: none` and no signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


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
