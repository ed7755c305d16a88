"""What the Engine.IO conformance tests share: where their cases come from, the replicas'
settings, and a long-polling client that reads every answer whole, as the suite's `fetch` does.

The WebSocket cases use the raw client of the hostile tests (`tests/hostile/rawws.py`): it
answers nothing by itself but WebSocket-level pings, so a test decides whether to answer an
Engine.IO PING.
"""

from __future__ import annotations

import http.client
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from tests.hostile.rawws import RawWS
from tests.support.checks import uid
from tests.support.gateway_proc import GatewayProcess, make_token

# Where the cases come from. Each test's docstring names its case: "<describe> > <describe> > <it>".
SUITE = "socketio/socket.io: docs/engine.io-protocol/v4-test-suite/test-suite.js (MIT)"
SUITE_COMMIT = "a66ed68506384e82ccc22b1b0cf992963afac8cb"

PATH = "/socket.io/"  # the suite's server answers at /engine.io/; this gateway at /socket.io/
NS = "/notifications"
# The suite's server has maxPayload 1000000; here that is MAX_PAYLOAD_BYTES, set to the same.
MAX_PAYLOAD = 1_000_000
ANSWER_TIMEOUT = 10.0  # far above any wait of a case (a heartbeat here is at most 2.5 s)
OPEN_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


@dataclass(frozen=True)
class Heartbeat:
    """PING_INTERVAL and PING_TIMEOUT of a replica, ms."""

    interval_ms: int
    timeout_ms: int

    @property
    def seconds(self) -> float:
        """Interval plus timeout: how long a client that answers no PING is kept."""
        return (self.interval_ms + self.timeout_ms) / 1000


# The suite's 300 and 200 ms are below what the gateway accepts (1000). An interval that is not
# a whole number of seconds shows that it is advertised as set.
QUICK = Heartbeat(1_500, 1_000)


@dataclass(frozen=True)
class Replica:
    proc: GatewayProcess
    secret: str
    heartbeat: Heartbeat

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def port(self) -> int:
        return self.proc.port

    def settle(self) -> None:
        """Two round trips on connections of their own: the replica has read what was sent to it
        before, and handled it as far as that goes without waiting (the suite sleeps 5 ms)."""
        for _ in range(2):
            with urllib.request.urlopen(self.url + "/healthz", timeout=ANSWER_TIMEOUT) as resp:
                resp.read()


@dataclass(frozen=True)
class Answer:
    status: int
    body: str


class Pending:
    """A request sent now on a connection of its own, its answer read later (or never)."""

    def __init__(self, replica: Replica, method: str, query: str, body: str | None = None) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=ANSWER_TIMEOUT)
        self._conn.request(method, f"{PATH}?{query}", body=None if body is None else body.encode())

    def answer(self) -> Answer:
        try:
            resp = self._conn.getresponse()
            return Answer(resp.status, resp.read().decode())
        finally:
            self._conn.close()

    def abandon(self) -> None:
        """Close the connection without reading the answer (a browser's `AbortController`)."""
        self._conn.close()


def request(replica: Replica, method: str, query: str, body: str | None = None) -> Answer:
    return Pending(replica, method, query, body).answer()


def handshake(replica: Replica) -> dict[str, Any]:
    """A new polling session's OPEN packet."""
    answer = request(replica, "GET", "EIO=4&transport=polling")
    assert answer.status == 200, answer
    assert answer.body.startswith("0"), answer
    opening: dict[str, Any] = orjson.loads(answer.body[1:])
    return opening


def open_session(replica: Replica) -> str:
    """A new polling session's id (the suite's `initLongPollingSession`)."""
    return str(handshake(replica)["sid"])


def session_query(sid: str) -> str:
    return f"EIO=4&transport=polling&sid={sid}"


def poll(replica: Replica, sid: str) -> Answer:
    return request(replica, "GET", session_query(sid))


def send_poll(replica: Replica, sid: str, extra: str = "") -> Pending:
    return Pending(replica, "GET", session_query(sid) + extra)


def post(replica: Replica, sid: str, payload: str) -> Answer:
    return request(replica, "POST", session_query(sid), payload)


def websocket(replica: Replica, query: str = "EIO=4&transport=websocket") -> RawWS:
    return RawWS.connect(replica.port, f"{PATH}?{query}", timeout=ANSWER_TIMEOUT)


def upgraded(replica: Replica, sid: str) -> RawWS:
    """The polling session `sid` upgraded to a WebSocket: probe, then UPGRADE."""
    ws = websocket(replica, f"EIO=4&transport=websocket&sid={sid}")
    ws.send_text("2probe")
    assert ws.recv_text(ANSWER_TIMEOUT) == "3probe"
    ws.send_text("5")
    return ws


def application_round_trip(replica: Replica, ws: RawWS) -> None:
    """Where the suite's echo server echoes `4hello`, this gateway answers a Socket.IO CONNECT
    (with a valid token) with its own: the next packet after the request must be that answer."""
    ws.send_text(f"40{NS}," + orjson.dumps({"token": make_token(replica.secret, uid("eio"))}).decode())
    answer = ws.recv_text(ANSWER_TIMEOUT)
    assert answer.startswith(f"40{NS},{{"), answer
    assert "sid" in orjson.loads(answer[len(f"40{NS},"):]), answer
