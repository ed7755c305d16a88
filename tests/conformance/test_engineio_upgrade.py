"""Engine.IO v4 conformance: the suite's `describe("upgrade")` (`eio.SUITE` at
`eio.SUITE_COMMIT`). Every case of the group applies.

Each case ends with the suite's echo server echoing `4hello` over the upgraded WebSocket; here
the application answers instead: a Socket.IO CONNECT, answered with its CONNECT as the next
packet (`eio.application_round_trip`).
"""

from __future__ import annotations

import pytest

from tests.conformance.eio import (
    Answer,
    Replica,
    application_round_trip,
    open_session,
    poll,
    upgraded,
    websocket,
)
from tests.hostile.rawws import Refused


def test_successfully_upgrades_from_http_long_polling_to_websocket(replica: Replica) -> None:
    """test-suite.js: upgrade > "successfully upgrades from HTTP long-polling to WebSocket"."""
    sid = open_session(replica)
    with websocket(replica, f"EIO=4&transport=websocket&sid={sid}") as ws:
        ws.send_text("2probe")
        assert ws.recv_text() == "3probe"
        assert poll(replica, sid) == Answer(200, "6")  # a NOOP ends the polling side
        ws.send_text("5")
        application_round_trip(replica, ws)


def test_ignores_http_requests_with_same_sid_after_upgrade(replica: Replica) -> None:
    """test-suite.js: upgrade > "ignores HTTP requests with same sid after upgrade"."""
    sid = open_session(replica)
    with upgraded(replica, sid) as ws:
        assert poll(replica, sid).status == 400
        application_round_trip(replica, ws)


def test_ignores_websocket_connection_with_same_sid_after_upgrade(replica: Replica) -> None:
    """test-suite.js: upgrade > "ignores WebSocket connection with same sid after upgrade"."""
    sid = open_session(replica)
    with upgraded(replica, sid) as ws:
        with pytest.raises(Refused):  # the suite waits for its `close`
            websocket(replica, f"EIO=4&transport=websocket&sid={sid}")
        application_round_trip(replica, ws)
