"""Two bridges on one bus: one active, one hot standby. Events the Node emitter sends reach
each client once (never once per bridge), and when the active bridge is SIGKILLed the standby
takes the lease over and events flow again, still once each.

Emitters publish fire-and-forget: what they send while no bridge is active is lost (documented).
So the test waits for the standby to become active before it emits again, and asserts exactly
the events sent while a bridge was active.
"""

from __future__ import annotations

from tests.e2e.producers.support import Producers, active, metric, wait_for
from tests.e2e.recovery.support import EVENT, connect, settle, token, uid
from tests.support.node_emitter import NodeEmitter
from tests.support.sio_client import NodeClients


def test_two_bridges_deliver_once_and_the_standby_takes_over_after_sigkill(
        node_clients: NodeClients, producers: Producers, emitter: NodeEmitter) -> None:
    first = producers.start_bridge()
    second = producers.start_bridge()
    wait_for(lambda: active(first) or active(second), "one bridge holds the lease")
    holder, standby = (first, second) if active(first) else (second, first)
    assert not active(standby)
    assert metric(standby, "bridge_role", role="standby") == 1

    a, b, c = uid(), uid(), uid("c")
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a, (c,)))
    connect(node_clients, "b", producers.replicas[1].ns_url, token(b, (c,)))
    for n in range(20):
        emitter.emit(EVENT, {"n": n}, to=[f"classroom:{c}"] if n % 2 else [f"user:{a}", f"classroom:{c}"])
    for name in ("a", "b"):
        got = settle(node_clients, name, 20)
        assert sorted(e.payload["n"] for e in got) == list(range(20))
    assert metric(standby, "bridge_messages_bridged_total", source="emitter") == 0
    assert metric(standby, "bridge_messages_standby_total", source="emitter") >= 20

    holder.kill()  # SIGKILL: no release, the lease expires by itself
    holder.wait_exit(10)
    wait_for(lambda: active(standby), "the standby takes the lease over")
    for n in range(20, 30):
        emitter.emit(EVENT, {"n": n}, to=[f"classroom:{c}"])
    for name in ("a", "b"):
        got = settle(node_clients, name, 30)
        assert sorted(e.payload["n"] for e in got) == list(range(30))
    assert metric(standby, "bridge_messages_bridged_total", source="emitter") == 10
    status, _ = standby.http_get("/readyz")
    assert status == 200
