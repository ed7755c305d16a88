"""What the core contract tests share: the settings of their replicas, tokens, requests and
the real client's connect, refusal and subscribe ack.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients

SECRET = secrets.token_hex(32)
API_KEY = secrets.token_urlsafe(24)
ORIGIN = "http://localhost:5173"
SECOND_ORIGIN = "https://app.example.com"


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
