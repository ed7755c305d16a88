"""Keys that rotate, seen by the real socket.io-client (issue 12, item 14), and the token edge
cases that must end in CONNECT_ERROR token_invalid, not a closed transport (item 7).

The rotation follows docs/operations.md ("Key rotation"): the replicas learn the next key
before the issuer signs with it, so a token signed with either key connects throughout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.conftest import StartGateway
from tests.support.checks import uid, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients

BASE = {"DRAIN_SECONDS": "0", "LOG_LEVEL": "info"}


def signed(secret: str, user: str, kid: str | None = None, **claims: Any) -> str:
    payload = {"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256",
                      headers={"kid": kid} if kid else None)


def raw_hs(secret: str, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token with exactly this header, HMAC-signed (PyJWT's encoder would rewrite `alg`)."""
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signing_input = f"{part(header)}.{part(claims)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def connects(clients: NodeClients, name: str, replica: GatewayProcess, token: str) -> None:
    clients.connect(name, replica.ns_url, token=f"Bearer {token}", transports=["websocket"])
    record = clients.wait_connected(name)
    assert record["type"] == "connect", record


def refused(clients: NodeClients, name: str, replica: GatewayProcess, token: str) -> dict[str, Any]:
    clients.connect(name, replica.ns_url, token=f"Bearer {token}", transports=["websocket"])
    record: dict[str, Any] = clients.wait_connected(name)
    assert record["type"] == "connect_error", record
    return record


def test_old_and_new_secret_both_connect_on_one_replica(node_clients: NodeClients,
                                                         start_gateway: StartGateway) -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    replica = start_gateway({**BASE, "JWT_SECRET": old, "JWT_SECRETS": f"next:{new}"})
    connects(node_clients, "old", replica, signed(old, uid()))
    connects(node_clients, "new", replica, signed(new, uid()))
    connects(node_clients, "new-kid", replica, signed(new, uid(), kid="next"))
    record = refused(node_clients, "other", replica, signed(secrets.token_hex(32), uid()))
    assert record["data"] == {"code": "token_invalid"}
    # a kid picks its key: the old secret under the new key's kid does not get in
    assert refused(node_clients, "mixed", replica, signed(old, uid(), kid="next"))["data"] == {
        "code": "token_invalid"}


def test_a_rolling_rotation_over_two_replicas(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    """Step 1 on replica b (it knows the next key), not yet on a: a token signed with the new
    key connects to b only. After step 1 everywhere, both tokens connect to both; after step 3
    (the old key retired) the old token is refused."""
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    a = start_gateway({**BASE, "JWT_SECRET": old})
    b = start_gateway({**BASE, "JWT_SECRET": old, "JWT_SECRETS": new})
    old_token, new_token = signed(old, uid()), signed(new, uid())
    connects(node_clients, "old-a", a, old_token)
    connects(node_clients, "old-b", b, old_token)
    connects(node_clients, "new-b", b, new_token)
    assert refused(node_clients, "new-a", a, new_token)["data"] == {"code": "token_invalid"}
    retired = start_gateway({**BASE, "JWT_SECRET": new})
    connects(node_clients, "new-retired", retired, new_token)
    assert refused(node_clients, "old-retired", retired, old_token)["data"] == {"code": "token_invalid"}


def test_a_jwks_file_chooses_the_key_by_kid(node_clients: NodeClients, start_gateway: StartGateway,
                                            tmp_path: Path) -> None:
    current = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    upcoming = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "RS256"}
            for kid, k in (("2025", current), ("2026", upcoming))]
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    replica = start_gateway({**BASE, "JWT_JWKS_URL": jwks.as_uri()})
    for kid, key in (("2025", current), ("2026", upcoming)):
        token = jwt.encode({"sub": uid(), "exp": int(time.time()) + 600}, key, algorithm="RS256",
                           headers={"kid": kid})
        connects(node_clients, f"kid-{kid}", replica, token)
    swapped = jwt.encode({"sub": uid(), "exp": int(time.time()) + 600}, current, algorithm="RS256",
                         headers={"kid": "2026"})
    assert refused(node_clients, "swapped", replica, swapped)["data"] == {"code": "token_invalid"}


# -- item 7: token edge cases end in CONNECT_ERROR token_invalid -------------------------------


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": 1}], ids=["list", "object"])
def test_an_alg_list_or_object_is_a_connect_error(node_clients: NodeClients, start_gateway: StartGateway,
                                                  secret: str, alg: Any) -> None:
    replica = start_gateway({**BASE, "JWT_SECRET": secret})
    token = raw_hs(secret, {"alg": alg, "typ": "JWT"}, {"sub": uid(), "exp": int(time.time()) + 600})
    record = refused(node_clients, "a", replica, token)
    assert (record["message"], record["data"]) == ("unauthorized", {"code": "token_invalid"})
    connects(node_clients, "after", replica, signed(secret, uid()))  # the replica is unhurt
    assert replica.alive()


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": str(int(time.time()) + 600)}, "exp is a str"),
    ({"exp": None}, "no exp claim"),
], ids=["numeric-string-exp", "no-exp"])
def test_exp_that_could_not_be_enforced_is_refused(node_clients: NodeClients, start_gateway: StartGateway,
                                                   secret: str, claims: dict[str, Any], reason: str) -> None:
    replica = start_gateway({**BASE, "JWT_SECRET": secret})
    record = refused(node_clients, "a", replica, signed(secret, uid(), **claims))
    assert record["data"] == {"code": "token_invalid"}
    wait_until(lambda: reason in replica.log_text(), 10, f"the log says why ({reason!r})")


def test_jwt_require_exp_off_lets_a_token_without_exp_in(node_clients: NodeClients, start_gateway: StartGateway,
                                                         secret: str) -> None:
    replica = start_gateway({**BASE, "JWT_SECRET": secret, "JWT_REQUIRE_EXP": "false"})
    connects(node_clients, "a", replica, signed(secret, uid(), exp=None))


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    document = b'{"keys": []}'

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def test_a_jwks_url_is_fetched_by_the_replica(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "idp-1", "alg": "RS256"}
    handler = type("Handler", (_JwksHandler,), {"document": json.dumps({"keys": [jwk]}).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        replica = start_gateway({**BASE, "JWT_JWKS_URL": f"http://127.0.0.1:{server.server_port}/jwks"})
        token = jwt.encode({"sub": uid(), "exp": int(time.time()) + 600}, key, algorithm="RS256",
                           headers={"kid": "idp-1"})
        connects(node_clients, "a", replica, token)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
