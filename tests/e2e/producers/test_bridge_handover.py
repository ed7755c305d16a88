"""A bridge stopped on purpose (SIGTERM: a rolling update, a node drained) hands the lease to
the standby without losing or repeating an event, while the real Node emitter keeps sending.

A crash loses what is sent until the standby takes over (documented, tests/e2e/producers/
test_bridge_lease.py); a planned stop must not: the stopping bridge keeps delivering until the
standby has taken over, and the two split the producers' stream at one message, the standby's
fence, which both read in the same order.
"""

from __future__ import annotations

from tests.e2e.producers.support import Producers, active, metric
from tests.e2e.recovery.support import EVENT, connect, settle, token, uid
from tests.support.node_emitter import NodeEmitter
from tests.support.sio_client import NodeClients

AFTER = 100  # events sent once the standby holds the lease, while the old one is still stopping


def test_a_sigterm_hands_over_without_losing_or_repeating_an_event(
        node_clients: NodeClients, producers: Producers, emitter: NodeEmitter) -> None:
    holder, standby = producers.two_bridges()
    user = uid()
    connect(node_clients, "a", producers.replicas[0].ns_url, token(user, ()))

    sent = 0

    def emit() -> None:
        nonlocal sent
        emitter.emit(EVENT, {"n": sent}, to=[f"user:{user}"])
        sent += 1

    for _ in range(20):
        emit()
    holder.sigterm()
    while not active(standby):
        for _ in range(5):
            emit()
        assert sent < 20_000, "the standby never took the lease over"
    for _ in range(AFTER):
        emit()
    holder.wait_exit(15)
    assert "the new holder's fence read" in holder.log_text(), holder.log_tail()

    got = sorted(e.payload["n"] for e in settle(node_clients, "a", sent))
    assert got == list(range(sent)), (sent, len(got), sorted(set(range(sent)) - set(got))[:20])
    assert metric(standby, "bridge_messages_lost_total", source="emitter", reason="lease_lost") == 0
