"""Engine.IO v4 conformance: the suite's `describe("message")` (`eio.SUITE` at
`eio.SUITE_COMMIT`), both transports.

Not applicable (the suite's server echoes every MESSAGE it receives; this gateway is an
application server whose messages are Socket.IO packets, and `hello`, `test1`... are none):
- message > HTTP long-polling > "sends and receives a payload containing one plain text packet": an echo.
- message > HTTP long-polling > "sends and receives a payload containing several plain text packets": an echo.
- message > HTTP long-polling > "sends and receives a payload containing plain text and binary packets": an echo.
- message > WebSocket > "sends and receives a plain text packet": an echo.
- message > WebSocket > "sends and receives a binary packet": an echo.
"""

from __future__ import annotations

from tests.conformance.eio import (
    ANSWER_TIMEOUT,
    Answer,
    Replica,
    open_session,
    poll,
    post,
    send_poll,
    websocket,
)
from tests.support.checks import wait_until

# -- HTTP long-polling -----------------------------------------------------------------------


def test_polling_closes_the_session_upon_invalid_packet_format(replica: Replica) -> None:
    """test-suite.js: message > HTTP long-polling > "closes the session upon invalid packet
    format"."""
    sid = open_session(replica)
    assert post(replica, sid, "abc").status == 400
    assert poll(replica, sid).status == 400


def test_polling_closes_the_session_upon_duplicate_poll_requests(replica: Replica) -> None:
    """test-suite.js: message > HTTP long-polling > "closes the session upon duplicate poll
    requests". The suite also accepts a 500 for the second poll; this gateway never answers 5xx
    to a client's mistake."""
    sid = open_session(replica)
    first = send_poll(replica, sid)
    replica.settle()  # the first poll is held
    second = send_poll(replica, sid, "&t=burst").answer()
    assert first.answer() == Answer(200, "1")
    assert second.status == 400, second
    assert poll(replica, sid).status == 400


def test_polling_closes_the_session_upon_cancelled_polling_request(replica: Replica) -> None:
    """test-suite.js: message > HTTP long-polling > "closes the session upon cancelled polling
    request". The suite polls again at once, which a second poll would refuse anyway; here the
    session must first end by itself (a POST to it is refused), long before the abandoned
    poll's own deadline (PING_INTERVAL + PING_TIMEOUT, 45 s)."""
    sid = open_session(replica)
    abandoned = send_poll(replica, sid)
    replica.settle()  # the poll is held
    abandoned.abandon()
    wait_until(lambda: post(replica, sid, "3").status == 400, ANSWER_TIMEOUT,
               "the session of an abandoned poll ends")
    assert poll(replica, sid).status == 400


# -- WebSocket -------------------------------------------------------------------------------


def test_websocket_closes_the_session_upon_invalid_packet_format(replica: Replica) -> None:
    """test-suite.js: message > WebSocket > "closes the session upon invalid packet format"."""
    with websocket(replica) as ws:
        ws.eio_open()
        ws.send_text("abc")
        assert ws.wait_closed(ANSWER_TIMEOUT)
