"""Engine.IO v4 conformance: the suite's `describe("close")` (`eio.SUITE` at
`eio.SUITE_COMMIT`), both transports. Every case of the group applies.
"""

from __future__ import annotations

from tests.conformance.eio import ANSWER_TIMEOUT, Answer, Replica, open_session, poll, post, send_poll, websocket


def test_polling_forcefully_closes_the_session(replica: Replica) -> None:
    """test-suite.js: close > HTTP long-polling > "forcefully closes the session": a CLOSE
    posted while a poll is held ends the session, and the held poll with a NOOP."""
    sid = open_session(replica)
    held = send_poll(replica, sid)
    replica.settle()  # the poll is held (the suite sends both at once)
    assert post(replica, sid, "1") == Answer(200, "ok")
    assert held.answer() == Answer(200, "6")
    assert poll(replica, sid).status == 400


def test_websocket_forcefully_closes_the_session(replica: Replica) -> None:
    """test-suite.js: close > WebSocket > "forcefully closes the session"."""
    with websocket(replica) as ws:
        ws.eio_open()
        ws.send_text("1")
        assert ws.wait_closed(ANSWER_TIMEOUT)
