"""The dev console answers clients on this machine only, by the socket's peer address
(issue 12, item 4): `curl -H 'Host: 127.0.0.1' http://<replica>:8080/` from another machine got
the page with the publish key and the console key, then minted admin tokens.

The peer address is the transport's, so these requests are built with a transport whose
`peername` the test chooses; no header (Host, X-Forwarded-For) can stand in for it.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import load_settings
from gateway.http.console import KEY_HEADER, TEMPLATE, Console, loopback_peer, same_origin_sockets

SECRET = "c" * 40
PAGE = TEMPLATE.read_text(encoding="utf-8")  # read here: the async tests may not block their loop


def request(method: str, path: str, peer: Any, headers: dict[str, str] | None = None) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: peer if name == "peername" else default
    return make_mocked_request(method, path, headers={"Host": "127.0.0.1:8080", **(headers or {})},
                               transport=transport)


def console() -> Console:
    return Console(load_settings({"JWT_SECRET": SECRET}, dev=True), PAGE)


@pytest.mark.parametrize("peer", [("127.0.0.1", 50000), ("127.8.9.10", 1), ("::1", 50000, 0, 0),
                                  ("::ffff:127.0.0.1", 50000, 0, 0)])
def test_loopback_peers(peer: Any) -> None:
    assert loopback_peer(request("GET", "/", peer))


@pytest.mark.parametrize("peer", [("10.1.2.3", 50000), ("192.168.1.20", 1), ("2001:db8::1", 1, 0, 0),
                                  ("::ffff:10.0.0.1", 1, 0, 0), None, "/run/gateway.sock", ("", 0)])
def test_other_peers(peer: Any) -> None:
    assert not loopback_peer(request("GET", "/", peer))


REMOTE = ("10.1.2.3", 50000)
SPOOFED = {"Host": "127.0.0.1:8080", "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
           "Forwarded": "for=127.0.0.1"}


async def test_a_remote_peer_does_not_get_the_page_whatever_its_headers_say() -> None:
    page = console()
    resp = await page.index(request("GET", "/", REMOTE, SPOOFED))
    assert resp.status == 403
    assert page.key not in (resp.text or "")
    assert SECRET not in (resp.text or "")
    local = await page.index(request("GET", "/", ("127.0.0.1", 50000)))
    assert local.status == 200
    assert page.key in (local.text or "")


async def test_a_remote_peer_cannot_mint_tokens_even_with_the_console_key() -> None:
    page = console()
    remote = await page.token(request("POST", "/console/token", REMOTE, {**SPOOFED, KEY_HEADER: page.key}))
    assert remote.status == 403


def test_the_console_mints_with_the_first_shared_secret_and_its_kid() -> None:
    page = Console(load_settings({"JWT_SECRETS": f"next:{SECRET}"}, dev=True), PAGE)
    token = page.mint("7", "teacher", ["1"], 60)
    assert jwt.get_unverified_header(token)["kid"] == "next"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "7"
    assert claims["exp"] - claims["iat"] == 60, "console tokens carry exp (JWT_REQUIRE_EXP)"


async def test_same_origin_sockets_only_for_loopback_peers() -> None:
    seen: list[web.Request] = []

    async def handler(req: web.Request) -> web.StreamResponse:
        seen.append(req)
        return web.Response()

    origin = {"Origin": "http://127.0.0.1:8080"}
    await same_origin_sockets(request("GET", "/socket.io/?EIO=4&transport=polling", REMOTE, origin), handler)
    await same_origin_sockets(request("GET", "/socket.io/?EIO=4&transport=polling", ("127.0.0.1", 1), origin),
                              handler)
    assert seen[0].headers.get("Origin") == origin["Origin"], "a remote peer keeps its Origin (checked)"
    assert "Origin" not in seen[1].headers
