"""Running it (docs/contract.md, "Running it"): `gateway --dev` prints a working token and
publish key with an ephemeral secret, `--help` documents every setting, `python -m gateway`
runs it, and a bad setting stops the start naming it.
"""

from __future__ import annotations

import re
import sys

import jwt
import pytest

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    BASE_ENV,
    COINS,
    SECRET,
    connect,
    emit_http,
    refusal,
    rooms_of,
    token,
)
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients

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
