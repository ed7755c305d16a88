"""A token that expires while connected drops the socket at `exp` (+ `JWT_LEEWAY`), with
"io server disconnect", and the client does not come back by itself.
"""

from __future__ import annotations

import time

from tests.e2e.conftest import StartGateway
from tests.e2e.contract.support import (
    BASE_ENV,
    BOTH,
    SECRET,
    connect,
    uid,
)
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients


def _expiring_token(seconds: int, user: str) -> tuple[str, int]:
    exp = int(time.time()) + seconds
    return make_token(SECRET, user, exp_in=None, exp=exp), exp


@BOTH
def test_token_expiry_drops_the_socket(node_clients: NodeClients, gw: GatewayProcess,
                                       transport: str) -> None:
    user = uid()
    tok, exp = _expiring_token(3, user)
    connect(node_clients, "a", gw, tok, transport)
    assert time.time() < exp - 1, "the handshake took too long for this test to mean anything"
    # JWT_LEEWAY is 0: dropped within a second of exp.
    dropped = node_clients.wait_disconnected("a", timeout=max(0.1, exp + 2.0 - time.time()))
    seen = time.time()
    assert seen >= exp - 0.1, f"dropped {exp - seen:.2f} s before the token expired"
    assert dropped["reason"] == "io server disconnect"
    assert dropped["retrying"] is False
    node_clients.assert_no_event("a", within=0.3)
    assert node_clients.state("a")["connected"] is False
    assert not [r for r in node_clients.log("a") if r["type"] == "connect"][1:], "it came back"


def test_token_expiry_honours_the_leeway(node_clients: NodeClients, start_gateway: StartGateway) -> None:
    leeway = 2
    replica = start_gateway({**BASE_ENV, "JWT_LEEWAY": str(leeway)})
    # expired a second ago, within the leeway: accepted at the handshake
    late = make_token(SECRET, uid(), exp_in=-1)
    node_clients.connect("late", replica.ns_url, token=late, transports=["websocket"])
    assert node_clients.wait_connected("late")["type"] == "connect"

    tok, exp = _expiring_token(1, uid())
    node_clients.connect("a", replica.ns_url, token=tok, transports=["websocket"])
    assert node_clients.wait_connected("a")["type"] == "connect"
    # still there after exp, while exp + leeway has not passed
    time.sleep(max(0.0, exp + 0.5 - time.time()))
    assert node_clients.state("a")["connected"] is True, "dropped before exp + leeway"
    dropped = node_clients.wait_disconnected("a", timeout=max(0.1, exp + leeway + 2.0 - time.time()))
    assert time.time() >= exp + leeway - 0.1
    assert dropped["reason"] == "io server disconnect"
    late_drop = node_clients.wait_disconnected("late", timeout=5)
    assert late_drop["reason"] == "io server disconnect"
