"""The harness, proved against socket.io's own server (tests/e2e/driver/reference_server.mjs,
socket.io 4.8 with connection state recovery), without any code of ours in the loop.

If these pass, a failing gateway e2e test means the gateway, not the harness: the driver really
connects, sees CONNECT_ERROR data, acks, offsets, and `close_transport` really makes the
client come back and recover what it missed.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support import node_env
from tests.support.gateway_proc import GatewayCluster, GatewayProcess, make_token
from tests.support.sio_client import AckTimeout, HarnessError, NodeClients

REFERENCE = node_env.DRIVER_DIR / "reference_server.mjs"
# Fast reconnection, so that a test does not wait out the client's default 1 s backoff;
# the reconnection logic itself is socket.io-client's own.
FAST = {"reconnectionDelay": 50, "reconnectionDelayMax": 200}
TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}


def reference_command() -> list[str]:
    return [node_env.node_binary(), str(REFERENCE)]


@pytest.fixture(scope="module")
def reference(ensure_node_modules: object) -> Iterator[GatewayProcess]:
    """The reference server, started through GatewayProcess (which this proves as well)."""
    server = GatewayProcess({}, command=reference_command(), name="reference")
    try:
        server.start().wait_ready(20)
        yield server
    finally:
        server.stop()


def post(server: GatewayProcess, path: str, body: Any = None) -> dict[str, Any]:
    data = json.dumps(body if body is not None else {}).encode()
    request = urllib.request.Request(
        server.url + path, data=data, method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def emit_to(server: GatewayProcess, room: str, payload: Any, event: str = "coins:earned") -> int:
    """Emit through the reference server; how many connected sockets were in the room."""
    return int(post(server, f"/emit?room={room}&event={event}", payload)["recipients"])


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unblock(reference: GatewayProcess) -> Iterator[None]:
    yield
    post(reference, "/unblock")


def test_driver_runs_the_real_client_4_8(node_clients: NodeClients) -> None:
    major, minor, *_ = (int(p) for p in node_clients.versions["socket.io-client"].split("."))
    assert (major, minor) >= (4, 8)
    assert (node_env.DRIVER_DIR / "node_modules" / node_env.HASH_FILE).read_text().strip() == (
        node_env.lock_hash()
    )


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_event_arrives_with_its_offset_as_last_argument(
    node_clients: NodeClients, reference: GatewayProcess, user: str, transport: str
) -> None:
    node_clients.connect("a", reference.ns_url, token=user, transports=TRANSPORTS[transport])
    connected = node_clients.wait_connected("a")
    assert connected["type"] == "connect", connected
    assert connected["recovered"] is False
    assert node_clients.state("a")["pid"], "recovery is on: the server gave the client a pid"

    payload = {"amount": 50, "reason": "exercise_completed", "newBalance": 1250}
    assert emit_to(reference, f"user:{user}", payload) == 1
    [event] = node_clients.wait_events("a", "coins:earned", 1)
    assert event.payload == payload
    assert event.data_args == [payload]
    assert isinstance(event.offset, str)
    assert event.args == [payload, event.offset]
    assert event.recovered is False
    assert node_clients.state("a")["lastOffset"] == event.offset


def test_refused_handshake_reports_message_and_data(
    node_clients: NodeClients, reference: GatewayProcess
) -> None:
    node_clients.connect("anon", reference.ns_url)
    outcome = node_clients.wait_connected("anon")
    assert outcome["type"] == "connect_error"
    assert outcome["message"] == "unauthorized"
    assert outcome["data"] == {"code": "token_missing"}
    assert outcome["retrying"] is False
    assert node_clients.state("anon")["connected"] is False


def test_ack_returns_the_server_answer_and_times_out_without_one(
    node_clients: NodeClients, reference: GatewayProcess, user: str
) -> None:
    node_clients.connect("a", reference.ns_url, token=f"Bearer {user}")
    assert node_clients.wait_connected("a")["type"] == "connect"
    answer = node_clients.emit("a", "subscribe:notifications", {"x": 1})
    assert answer == {"ok": True, "rooms": [f"user:{user}"]}
    assert node_clients.emit("a", "subscribe:notifications") == answer  # payload optional
    with pytest.raises(AckTimeout, match="no ack for 'nobody:listens'"):
        node_clients.emit("a", "nobody:listens", timeout=0.3)
    assert node_clients.emit("a", "nobody:listens", ack=False) is None


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_extra_headers_reach_the_server(
    node_clients: NodeClients, reference: GatewayProcess, user: str, transport: str
) -> None:
    # What the gateway's Origin check and Authorization-header auth will be tested with.
    headers = {"Origin": "http://localhost:5173", "Authorization": "Bearer header-token"}
    node_clients.connect("a", reference.ns_url, token=user, transports=TRANSPORTS[transport],
                         extraHeaders=headers, withCredentials=True)
    assert node_clients.wait_connected("a")["type"] == "connect"
    seen = node_clients.emit("a", "whoami")
    assert seen == {"user": user, "origin": headers["Origin"],
                    "authorization": headers["Authorization"], "transport": transport}


@pytest.mark.parametrize(
    ("transport", "mode"),
    [("websocket", "close"), ("polling", "close"), ("upgrade", "close"),
     ("websocket", "terminate")],
)
def test_close_transport_reconnects_and_recovers_missed_events(
    node_clients: NodeClients, reference: GatewayProcess, user: str, transport: str, mode: str,
    unblock: None,
) -> None:
    room = f"user:{user}"
    node_clients.connect("a", reference.ns_url, token=user, transports=TRANSPORTS[transport],
                         **FAST)
    first = node_clients.wait_connected("a")
    assert first["type"] == "connect"
    # socket.io's in-memory adapter recovers only from a known offset: receive one event first.
    emit_to(reference, room, {"n": 0})
    node_clients.wait_events("a", "coins:earned", 1)

    # The server refuses new handshakes, so the client stays away while we emit.
    post(reference, "/block")
    node_clients.close_transport("a", mode=mode)
    dropped = node_clients.wait_disconnected("a")
    assert dropped["reason"] in {"forced close", "transport close"}
    assert dropped["retrying"] is True
    assert post(reference, f"/wait_empty?room={room}")["ok"], "the server saw the drop"
    assert emit_to(reference, room, {"n": 1}) == 0, "emitted while the client was away"
    assert emit_to(reference, room, {"n": 2}) == 0
    node_clients.assert_no_event("a", "coins:earned", within=0.2, allowed=1)

    post(reference, "/unblock")
    back = node_clients.wait_connected("a", timeout=10)
    assert back["type"] == "connect", back
    assert back["recovered"] is True
    assert back["sid"] == first["sid"]
    events = node_clients.wait_events("a", "coins:earned", 3)
    assert [e.payload for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [e.recovered for e in events] == [False, True, True]
    assert emit_to(reference, room, {"n": 3}) == 1
    events = node_clients.wait_events("a", "coins:earned", 4)
    assert [e.payload for e in events][3:] == [{"n": 3}]
    node_clients.assert_no_event("a", "coins:earned", within=0.2, allowed=4)
    state = node_clients.state("a")
    assert state["recovered"] is True
    assert state["lastOffset"] == events[-1].offset
    log_types = [r["type"] for r in node_clients.log("a")]
    assert "reconnect_attempt" in log_types
    assert "reconnect" in log_types


def test_server_side_drop_is_followed_by_a_recovered_reconnection(
    node_clients: NodeClients, reference: GatewayProcess, user: str
) -> None:
    # What a draining replica does: close the transport, never send a DISCONNECT packet.
    node_clients.connect("a", reference.ns_url, token=user, transports=["websocket"], **FAST)
    first = node_clients.wait_connected("a")
    emit_to(reference, f"user:{user}", {"n": 0})
    node_clients.wait_events("a", "coins:earned", 1)

    assert post(reference, f"/drop?room=user:{user}")["dropped"] == 1
    assert node_clients.wait_disconnected("a")["retrying"] is True
    back = node_clients.wait_connected("a", timeout=10)
    assert back["type"] == "connect"
    assert back["recovered"] is True
    assert back["sid"] == first["sid"]


def test_disconnect_is_final(
    node_clients: NodeClients, reference: GatewayProcess, user: str
) -> None:
    node_clients.connect("a", reference.ns_url, token=user)
    assert node_clients.wait_connected("a")["type"] == "connect"
    node_clients.disconnect("a")
    gone = node_clients.wait_disconnected("a")
    assert gone["reason"] == "io client disconnect"
    assert gone["retrying"] is False
    # The server's side of it: the socket leaves its rooms, and no recovery brings it back.
    assert post(reference, f"/wait_empty?room=user:{user}")["ok"]
    assert emit_to(reference, f"user:{user}", {"n": 1}) == 0
    node_clients.assert_no_event("a", "coins:earned", within=0.2)


def test_many_sockets_each_get_only_their_events(
    node_clients: NodeClients, reference: GatewayProcess
) -> None:
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    for i, who in enumerate(users):
        node_clients.connect(f"s{i}", reference.ns_url, token=who)
    for i in range(len(users)):
        assert node_clients.wait_connected(f"s{i}")["type"] == "connect"
    assert emit_to(reference, f"user:{users[0]}", {"to": 0}) == 1
    node_clients.wait_events("s0", "coins:earned", 1)
    for i in range(1, len(users)):
        node_clients.assert_no_event(f"s{i}", within=0.1)


def test_waits_fail_with_what_was_received(
    node_clients: NodeClients, reference: GatewayProcess, user: str
) -> None:
    node_clients.connect("a", reference.ns_url, token=user)
    assert node_clients.wait_connected("a")["type"] == "connect"
    emit_to(reference, f"user:{user}", {"n": 1})
    node_clients.wait_events("a", "coins:earned", 1)
    with pytest.raises(AssertionError, match=r"(?s)1 of 2 coins:earned.*\"n\": 1"):
        node_clients.wait_events("a", "coins:earned", 2, timeout=0.2)
    # An event that came before the call fails the assertion too.
    with pytest.raises(AssertionError, match="expected at most 0"):
        node_clients.assert_no_event("a", "coins:earned", within=0.1)
    node_clients.assert_no_event("a", "rank:promoted", within=0.1)
    node_clients.assert_no_event("a", "coins:earned", within=0.1, allowed=1)


def test_gateway_process_reports_an_early_exit_with_its_log() -> None:
    crashing = GatewayProcess(
        {}, command=[sys.executable, "-c", "print('boom: bad setting'); raise SystemExit(3)"]
    )
    try:
        crashing.start()
        with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*boom: bad setting"):
            crashing.wait_ready(10)
    finally:
        crashing.stop()
    assert "boom: bad setting" in crashing.log_text()


def test_gateway_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", "leaked-from-the-runner")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    proc = GatewayProcess({"DRAIN_SECONDS": "1"}, command=[sys.executable, "-c", script])
    try:
        proc.start()
        assert proc.wait_exit(10) == 0
        env = json.loads(proc.log_text())
    finally:
        proc.stop()
    assert env["PORT"] == str(proc.port)
    assert env["HOST"] == "127.0.0.1"
    assert env["DRAIN_SECONDS"] == "1"
    assert "JWT_SECRET" not in env
    assert "REDIS_URL" not in env
    assert env["PATH"] == os.environ["PATH"]


def test_cluster_starts_ready_replicas_and_stops_them_by_pid() -> None:
    cluster = GatewayCluster(2, None, {}, command=reference_command())
    with cluster:
        assert len({replica.port for replica in cluster}) == 2
        assert all(replica.http_get("/readyz")[0] == 200 for replica in cluster)
        cluster[1].sigterm()
        assert cluster[1].wait_exit(10) == 0
        assert cluster[0].alive()
    assert not any(replica.alive() for replica in cluster)


def test_make_token_claims() -> None:
    secret = "s" * 32
    token = make_token(secret, "42", role="teacher", classrooms=("7", 8), extra="x")
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert claims["role"] == "teacher"
    assert claims["classrooms"] == ["7", 8]
    assert claims["extra"] == "x"
    assert claims["exp"] - claims["iat"] == 3600
    bare = jwt.decode(make_token(secret, None, role=None, classrooms=None, exp_in=None), secret,
                      algorithms=["HS256"])
    assert set(bare) == {"iat"}
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(make_token(secret, 1, exp_in=-10), secret, algorithms=["HS256"])


def test_driver_survives_bad_commands(
    node_clients: NodeClients, reference: GatewayProcess, user: str
) -> None:
    with pytest.raises(HarnessError, match="no socket named"):
        node_clients.state("nobody")
    node_clients.connect("x", "http://127.0.0.1:9/notifications", reconnection=False)
    outcome = node_clients.wait_connected("x")
    assert outcome["type"] == "connect_error"
    with pytest.raises(HarnessError, match="is not connected"):
        node_clients.close_transport("x")
    with pytest.raises(HarnessError, match="exists already"):
        node_clients.connect("x", reference.ns_url, token=user)
    node_clients.forget("x")
    node_clients.connect("x", reference.ns_url, token=user)
    assert node_clients.wait_connected("x")["type"] == "connect"
    with pytest.raises(HarnessError, match="unknown close_transport mode"):
        node_clients.close_transport("x", mode="sideways")
    assert node_clients.state("x")["connected"] is True
