"""JWT_JWKS_URL fetched in the background (issue 12, item 14), against a local HTTP(S) server.

In-process and async: the autouse blockbuster fixture fails these tests if a fetch or a file
read blocks the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.config import load_settings
from gateway.http.jwks import JwksRefresher, jwks_lifecycle
from gateway.policy.auth import Authenticator, AuthError
from tests.support.ports import free_port

WAIT = 10.0  # a bound on waiting for the background task, never an expectation of speed


@dataclass
class Idp:
    """An identity provider's JWKS endpoint whose document and status the test changes."""

    keys: dict[str, Any]
    status: int = 200
    body: bytes | None = None
    requests: int = 0
    signing: dict[str, Any] = field(default_factory=dict)

    def rotate_to(self, *kids: str) -> None:
        for kid in kids:
            if kid not in self.signing:
                self.signing[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = {kid: self.signing[kid] for kid in kids}

    def document(self) -> bytes:
        keys = [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "RS256",
                 "use": "sig"} for kid, k in self.keys.items()]
        return json.dumps({"keys": keys}).encode()

    async def handle(self, request: web.Request) -> web.Response:
        del request
        self.requests += 1
        body = self.body if self.body is not None else self.document()
        return web.Response(body=body, status=self.status, content_type="application/json")

    def token(self, kid: str, sub: str = "1") -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, self.signing[kid], algorithm="RS256",
                          headers={"kid": kid})


@pytest.fixture
def idp() -> Idp:
    provider = Idp({})
    provider.rotate_to("k1")
    return provider


@pytest.fixture
def port() -> int:
    return free_port()


async def moved(request: web.Request) -> web.Response:
    del request
    raise web.HTTPFound("/jwks")


async def serve(idp: Idp, port: int, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/jwks", idp.handle)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return runner


@pytest.fixture
async def http_idp(idp: Idp, port: int) -> AsyncIterator[str]:
    runner = await serve(idp, port)
    try:
        yield f"http://127.0.0.1:{port}/jwks"
    finally:
        await runner.cleanup()


def authenticator(url: str, **env: str) -> Authenticator:
    return Authenticator(load_settings({"JWT_JWKS_URL": url, **env}))


def refused(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        auth.authenticate(token)
    return info.value.detail


async def until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the refresher did not act in time"
        await asyncio.sleep(0.02)


async def test_keys_are_fetched_then_rotated(idp: Idp, http_idp: str) -> None:
    auth = authenticator(http_idp)
    refresher = JwksRefresher(auth)
    assert auth.not_ready() == "jwks_not_loaded"
    try:
        assert await refresher.refresh()
        assert auth.not_ready() is None
        assert auth.authenticate(idp.token("k1")).user_id == "1"
        idp.rotate_to("k1", "k2")  # the provider publishes the next key before signing with it
        assert await refresher.refresh()
        assert auth.authenticate(idp.token("k2")).user_id == "1"
        assert auth.authenticate(idp.token("k1")).user_id == "1"
        idp.rotate_to("k2")  # and retires the old one later
        assert await refresher.refresh()
        assert "no key for kid 'k1'" in refused(auth, idp.token("k1"))
    finally:
        await refresher.close()


@pytest.mark.parametrize(("status", "body"), [(500, None), (200, b"<html>"), (200, b'{"keys": []}'),
                                              (200, b"x" * ((1 << 20) + 1))])
async def test_a_failed_fetch_keeps_the_keys_in_force(idp: Idp, http_idp: str, status: int,
                                                      body: bytes | None) -> None:
    auth = authenticator(http_idp)
    refresher = JwksRefresher(auth)
    try:
        assert await refresher.refresh()
        idp.status, idp.body = status, body
        assert not await refresher.refresh()
        assert auth.authenticate(idp.token("k1")).user_id == "1"
    finally:
        await refresher.close()


async def test_secrets_are_never_taken_from_the_network(idp: Idp, http_idp: str) -> None:
    idp.body = json.dumps({"keys": [{"kty": "oct", "kid": "s", "k": "A" * 43}]}).encode()
    auth = authenticator(http_idp)
    refresher = JwksRefresher(auth)
    try:
        assert not await refresher.refresh()
        assert auth.not_ready() == "jwks_not_loaded"
    finally:
        await refresher.close()


async def test_redirects_are_not_followed(idp: Idp, http_idp: str) -> None:
    auth = authenticator(http_idp.replace("/jwks", "/moved"))
    refresher = JwksRefresher(auth)
    try:
        assert not await refresher.refresh()
        assert idp.requests == 0
    finally:
        await refresher.close()


async def test_an_unknown_kid_brings_the_next_fetch_forward(idp: Idp, http_idp: str) -> None:
    auth = authenticator(http_idp, JWT_JWKS_REFRESH="86400")
    refresher = JwksRefresher(auth, min_interval=0)
    assert await refresher.refresh()
    task = asyncio.get_running_loop().create_task(refresher.run())
    try:
        idp.rotate_to("k1", "k2")
        before = idp.requests
        assert "no key for kid 'k2'" in refused(auth, idp.token("k2"))
        await until(lambda: idp.requests > before and auth.key_labels == ["JWKS kid=k1", "JWKS kid=k2"])
        assert auth.authenticate(idp.token("k2")).user_id == "1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await refresher.close()


async def test_the_first_fetch_happens_before_the_app_serves(idp: Idp, http_idp: str) -> None:
    auth = authenticator(http_idp)
    app = web.Application()
    app.cleanup_ctx.append(jwks_lifecycle(auth))
    runner = web.AppRunner(app)
    await runner.setup()  # what the replica awaits before it listens
    try:
        assert auth.authenticate(idp.token("k1")).user_id == "1"
    finally:
        await runner.cleanup()


async def test_without_a_jwks_url_the_lifecycle_does_nothing() -> None:
    auth = Authenticator(load_settings({"JWT_SECRET": "s" * 40}))
    app = web.Application()
    app.cleanup_ctx.append(jwks_lifecycle(auth))
    runner = web.AppRunner(app)
    await runner.setup()
    await runner.cleanup()


async def test_a_file_is_reread_off_the_event_loop(tmp_path: Path, idp: Idp) -> None:
    path = tmp_path / "jwks.json"
    await asyncio.to_thread(path.write_bytes, idp.document())
    auth = await asyncio.to_thread(authenticator, path.as_uri())
    assert auth.authenticate(idp.token("k1")).user_id == "1", "read at start, before any refresh"
    idp.rotate_to("k2")
    await asyncio.to_thread(path.write_bytes, idp.document())
    assert await JwksRefresher(auth).refresh()
    assert auth.authenticate(idp.token("k2")).user_id == "1"
    assert "no key for kid 'k1'" in refused(auth, idp.token("k1"))


# -- https with a certificate made here --------------------------------------------------------


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A self-signed certificate for 127.0.0.1: the server's context, and a client context
    that trusts it (as SSL_CERT_FILE would make the system trust a private CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return Tls(server, client)


async def test_https_with_a_trusted_certificate(idp: Idp, port: int, tls: Tls) -> None:
    runner = await serve(idp, port, tls.server)
    url = f"https://127.0.0.1:{port}/jwks"
    auth = authenticator(url)
    trusting = JwksRefresher(auth, ssl_context=tls.client)
    default = JwksRefresher(authenticator(url))  # the system's CAs do not know this certificate
    try:
        assert await trusting.refresh()
        assert auth.authenticate(idp.token("k1")).user_id == "1"
        assert not await default.refresh()
    finally:
        await trusting.close()
        await default.close()
        await runner.cleanup()
