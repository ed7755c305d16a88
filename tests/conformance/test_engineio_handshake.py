"""Engine.IO v4 conformance: the suite's `describe("handshake")` (`eio.SUITE` at
`eio.SUITE_COMMIT`), both transports. Every case of the group applies.

The suite's server advertises pingInterval 300, pingTimeout 200 and maxPayload 1000000. The
gateway refuses heartbeats under 1000 ms, so this replica runs with `eio.QUICK` and must
advertise exactly that; its MAX_PAYLOAD_BYTES is the suite's 1000000.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conformance.eio import MAX_PAYLOAD, OPEN_KEYS, QUICK, Replica, request, websocket
from tests.hostile.rawws import Refused

HEARTBEAT = QUICK


def assert_opening(replica: Replica, opening: dict[str, Any], upgrades: list[str]) -> None:
    assert set(opening) == OPEN_KEYS, opening
    assert isinstance(opening["sid"], str)
    assert opening["upgrades"] == upgrades
    assert opening["pingInterval"] == replica.heartbeat.interval_ms
    assert opening["pingTimeout"] == replica.heartbeat.timeout_ms
    assert opening["maxPayload"] == MAX_PAYLOAD


# -- HTTP long-polling -----------------------------------------------------------------------


def test_polling_successfully_opens_a_session(replica: Replica) -> None:
    """test-suite.js: handshake > HTTP long-polling > "successfully opens a session"."""
    answer = request(replica, "GET", "EIO=4&transport=polling")
    assert answer.status == 200, answer
    assert answer.body.startswith("0"), answer
    assert_opening(replica, orjson.loads(answer.body[1:]), ["websocket"])


def test_polling_fails_with_an_invalid_eio_query_parameter(replica: Replica) -> None:
    """test-suite.js: handshake > HTTP long-polling > "fails with an invalid 'EIO' query
    parameter"."""
    assert request(replica, "GET", "transport=polling").status == 400
    assert request(replica, "GET", "EIO=abc&transport=polling").status == 400


def test_polling_fails_with_an_invalid_transport_query_parameter(replica: Replica) -> None:
    """test-suite.js: handshake > HTTP long-polling > "fails with an invalid 'transport' query
    parameter"."""
    assert request(replica, "GET", "EIO=4").status == 400
    assert request(replica, "GET", "EIO=4&transport=abc").status == 400


def test_polling_fails_with_an_invalid_request_method(replica: Replica) -> None:
    """test-suite.js: handshake > HTTP long-polling > "fails with an invalid request method"."""
    assert request(replica, "POST", "EIO=4&transport=polling").status == 400
    assert request(replica, "PUT", "EIO=4&transport=polling").status == 400


# -- WebSocket -------------------------------------------------------------------------------


def test_websocket_successfully_opens_a_session(replica: Replica) -> None:
    """test-suite.js: handshake > WebSocket > "successfully opens a session"."""
    with websocket(replica) as ws:
        text = ws.recv_text()
    assert text.startswith("0"), text
    assert_opening(replica, orjson.loads(text[1:]), [])


def refused_status(replica: Replica, query: str) -> int:
    """The HTTP status of a refused WebSocket upgrade (the suite waits for its `close`)."""
    with pytest.raises(Refused) as refused:
        websocket(replica, query)
    return refused.value.status


def test_websocket_fails_with_an_invalid_eio_query_parameter(replica: Replica) -> None:
    """test-suite.js: handshake > WebSocket > "fails with an invalid 'EIO' query parameter"."""
    assert refused_status(replica, "transport=websocket") == 400
    assert refused_status(replica, "EIO=abc&transport=websocket") == 400


def test_websocket_fails_with_an_invalid_transport_query_parameter(replica: Replica) -> None:
    """test-suite.js: handshake > WebSocket > "fails with an invalid 'transport' query parameter"."""
    assert refused_status(replica, "EIO=4") == 400
    assert refused_status(replica, "EIO=4&transport=abc") == 400
