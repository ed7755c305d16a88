"""The console's server side, without a browser: what the page is served with (an embedded
token that verifies, the publish key, examples that pass validation, a strict CSP), the token
minting endpoint and its guard, the console's own origin allowed to open sockets, and no
console at all without --dev."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import GATEWAY, create_app
from gateway.config import Settings, load_settings
from gateway.http.console import TEMPLATE, Console, examples, parse_identity, script_json
from publisher.events import EVENT_SCHEMAS, validate

PUBLISH_KEY = "test-publish-key-of-24-bytes"
CONFIG = re.compile(r'<script type="application/json" id="ngw-config">(.*?)</script>', re.S)


def dev_settings(**env: str) -> Settings:
    return load_settings(env, {"publish_api_key": PUBLISH_KEY}, dev=True)


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(dev_settings()))) as http:
        yield http


def gateway_settings(http: TestClient[Any, Any]) -> Settings:
    assert http.app is not None
    return http.app[GATEWAY].settings


def page_config(html: str) -> dict[str, Any]:
    match = CONFIG.search(html)
    assert match, "the page has no embedded config"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


async def test_page_embeds_a_working_token_and_the_publish_key(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    html = await resp.text()
    assert "__NGW_" not in html
    config = page_config(html)
    settings = gateway_settings(client)
    claims = jwt.decode(config["token"], settings.jwt_secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], claims["classrooms"]) == ("1", "student", ["1"])
    assert 86_000 < claims["exp"] - claims["iat"] <= 86_400
    assert config["publishKey"] == PUBLISH_KEY
    assert config["namespace"] == "/notifications"
    assert config["events"] == list(EVENT_SCHEMAS)
    for event, payload in config["examples"].items():
        validate(event, payload)


async def test_page_scripts_run_only_with_the_nonce_of_the_response(
    client: TestClient[Any, Any],
) -> None:
    first = await client.get("/")
    second = await client.get("/")
    csp = first.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp)
    assert nonce
    assert nonce.group(1) not in second.headers["Content-Security-Policy"]
    html = await first.text()
    assert html.count(f'nonce="{nonce.group(1)}"') == 2  # the style and the script
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert re.search(r"connect-src 'self' ws://127\.0\.0\.1:\d+ wss://", csp), csp


async def test_minting_needs_the_console_key_and_checks_the_identity(
    client: TestClient[Any, Any],
) -> None:
    config = page_config(await (await client.get("/")).text())
    key = {"X-Console-Key": config["consoleKey"]}
    body = {"user": 42, "role": "teacher", "classrooms": ["7", 9, "7"], "ttl": 60}

    for headers in ({}, {"X-Console-Key": "guess"}):
        resp = await client.post("/console/token", json=body, headers=headers)
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden"

    resp = await client.post("/console/token", json=body, headers=key)
    assert resp.status == 200
    settings = gateway_settings(client)
    claims = jwt.decode((await resp.json())["token"], settings.jwt_secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], claims["classrooms"]) == ("42", "teacher", ["7", "9"])
    assert claims["exp"] - claims["iat"] == 60

    resp = await client.post("/console/token", data=b"{", headers=key)
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_json")
    resp = await client.post("/console/token", json={**body, "role": "root"}, headers=key)
    assert resp.status == 400
    assert (await resp.json())["detail"].startswith("role:")


@pytest.mark.parametrize(("body", "field"), [
    ([], "the body"),
    ({"user": None}, "user:"),
    ({"user": "a\nb"}, "user:"),
    ({"user": 1.5}, "user:"),
    ({"user": "1", "role": "owner"}, "role:"),
    ({"user": "1", "classrooms": "7"}, "classrooms:"),
    ({"user": "1", "classrooms": ["x\ty"]}, "classrooms:"),
    ({"user": "1", "classrooms": [True]}, "classrooms:"),
    ({"user": "1", "ttl": 10**9}, "ttl:"),
    ({"user": "1", "ttl": "60"}, "ttl:"),
    ({"user": "1", "ttl": True}, "ttl:"),
])
def test_parse_identity_names_the_bad_field(body: Any, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}"):
        parse_identity(body)


def test_parse_identity_defaults() -> None:
    assert parse_identity({"user": 5}) == ("5", "student", [], 86_400)
    assert parse_identity({"user": "5", "ttl": -60})[3] == -60  # an expired token, on purpose


async def test_the_console_origin_may_open_sockets_and_others_may_not(
    client: TestClient[Any, Any],
) -> None:
    own = f"http://{client.host}:{client.port}"
    handshake = "/socket.io/?EIO=4&transport=polling"
    for origin, status in ((own, 200), ("http://localhost:5173", 200), (None, 200),
                           ("http://evil.example", 400), (own + "0", 400)):
        headers = {"Origin": origin} if origin else {}
        resp = await client.get(handshake, headers=headers)
        assert resp.status == status, (origin, await resp.text())
        if status == 200:
            assert (await resp.text()).startswith("0{")


async def test_the_console_origin_may_open_websockets(client: TestClient[Any, Any]) -> None:
    own = f"http://{client.host}:{client.port}"
    async with client.ws_connect("/socket.io/?EIO=4&transport=websocket",
                                 headers={"Origin": own}) as ws:
        assert (await ws.receive_str()).startswith("0{")
    with pytest.raises(WSServerHandshakeError):
        await client.ws_connect("/socket.io/?EIO=4&transport=websocket",
                                headers={"Origin": "http://evil.example"})


async def test_under_a_name_that_is_not_local_the_console_answers_nothing(
    client: TestClient[Any, Any],
) -> None:
    rebound = {"Host": f"evil.example:{client.port}"}
    resp = await client.get("/", headers=rebound)
    assert resp.status == 403
    assert "DNS rebinding" in await resp.text()
    resp = await client.post("/console/token", json={"user": "1"}, headers=rebound)
    assert resp.status == 403
    resp = await client.get("/socket.io/?EIO=4&transport=polling",
                            headers={**rebound, "Origin": f"http://evil.example:{client.port}"})
    assert resp.status == 400
    for host in ("localhost", "app.localhost", "[::1]", "10.1.2.3"):
        resp = await client.get("/", headers={"Host": f"{host}:{client.port}"})
        assert resp.status == 200, host


async def test_without_dev_there_is_no_console() -> None:
    settings = load_settings({"JWT_SECRET": "x" * 40, "PUBLISH_API_KEY": PUBLISH_KEY})
    async with TestClient(TestServer(create_app(settings))) as http:
        assert (await http.get("/")).status == 404
        assert (await http.post("/console/token", json={"user": "1"})).status == 404
        own = f"http://{http.host}:{http.port}"
        resp = await http.get("/socket.io/?EIO=4&transport=polling", headers={"Origin": own})
        assert resp.status == 400


async def test_with_a_public_key_the_console_cannot_mint(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = dev_settings(JWT_PUBLIC_KEY=pem)
    console = Console(settings, await asyncio.to_thread(TEMPLATE.read_text, encoding="utf-8"))
    assert not console.can_mint
    assert console.page_config()["token"] == ""
    async with TestClient(TestServer(create_app(settings))) as http:
        config = page_config(await (await http.get("/")).text())
        assert (config["token"], config["canMint"]) == ("", False)
        resp = await http.post("/console/token", json={"user": "1"},
                               headers={"X-Console-Key": config["consoleKey"]})
        assert (resp.status, (await resp.json())["error"]) == (409, "cannot_mint")


def test_tokens_carry_audience_and_issuer_when_the_gateway_requires_them() -> None:
    settings = dev_settings(JWT_AUDIENCE="app", JWT_ISSUER="https://id.example")
    token = Console(settings, TEMPLATE.read_text(encoding="utf-8")).mint("1", "student", [], 60)
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], audience="app",
                        issuer="https://id.example")
    assert claims["sub"] == "1"


def test_script_json_cannot_close_the_script_element() -> None:
    text = script_json({"x": "</script><script>alert(1)</script>", "y": "a&b\u2028"})
    for raw in ("<", ">", "&", "\u2028"):
        assert raw not in text
    assert json.loads(text) == {"x": "</script><script>alert(1)</script>", "y": "a&b\u2028"}


def test_every_schema_has_a_valid_example() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    out = examples(now)
    assert set(out) == set(EVENT_SCHEMAS)
    for event, payload in out.items():
        validate(event, payload)
    assert out["notification:read"]["readAt"] == "2024-05-01T12:00:00.000Z"


def test_a_template_without_its_placeholders_is_refused() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Console(dev_settings(), "<!doctype html><title>console</title>")
