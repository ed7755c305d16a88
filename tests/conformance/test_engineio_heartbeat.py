"""Engine.IO v4 conformance: the suite's `describe("heartbeat")` (`eio.SUITE` at
`eio.SUITE_COMMIT`), both transports. Every case of the group applies.

The replica runs with `eio.QUICK` (the suite's 300/200 ms are below what the gateway accepts),
so a case waits for that heartbeat instead of the suite's.
"""

from __future__ import annotations

import time

from tests.conformance.eio import ANSWER_TIMEOUT, QUICK, Answer, Replica, open_session, poll, post, websocket
from tests.hostile.rawws import TEXT

HEARTBEAT = QUICK
# The replica checks heartbeats a few times a second, not at the exact millisecond.
SLACK = 1.0


# -- HTTP long-polling -----------------------------------------------------------------------


def test_polling_sends_ping_pong_packets(replica: Replica) -> None:
    """test-suite.js: heartbeat > HTTP long-polling > "sends ping/pong packets". A POST is
    answered `ok`, as the suite's message cases expect."""
    sid = open_session(replica)
    for _ in range(3):
        assert poll(replica, sid) == Answer(200, "2")
        assert post(replica, sid, "3") == Answer(200, "ok")


def test_polling_closes_the_session_upon_ping_timeout(replica: Replica) -> None:
    """test-suite.js: heartbeat > HTTP long-polling > "closes the session upon ping timeout"."""
    sid = open_session(replica)
    time.sleep(replica.heartbeat.seconds + SLACK)  # the suite's sleep(PING_INTERVAL + PING_TIMEOUT)
    assert poll(replica, sid).status == 400


# -- WebSocket -------------------------------------------------------------------------------


def test_websocket_sends_ping_pong_packets(replica: Replica) -> None:
    """test-suite.js: heartbeat > WebSocket > "sends ping/pong packets"."""
    with websocket(replica) as ws:
        ws.eio_open()
        for _ in range(3):
            assert ws.recv_frame(ANSWER_TIMEOUT) == (TEXT, b"2")
            ws.send_text("3")


def test_websocket_closes_the_session_upon_ping_timeout(replica: Replica) -> None:
    """test-suite.js: heartbeat > WebSocket > "closes the session upon ping timeout"."""
    with websocket(replica) as ws:
        ws.eio_open()
        assert ws.wait_closed(replica.heartbeat.seconds + ANSWER_TIMEOUT)  # no PING answered
