"""The real @socket.io/redis-emitter, unchanged, reaching the real socket.io-client through
`python -m publisher bridge` and two gateway replicas: user, room, several rooms with except
(exactly once), everyone; socketsJoin / socketsLeave / disconnectSockets; recovery of what a
client missed; what the bridge refuses, counted.
"""

from __future__ import annotations

import pytest

from tests.e2e.producers.support import Producers, active, metric, refused, wait_for
from tests.e2e.recovery.support import EVENT, come_back, connect, go_away, rooms_of, settle, token, uid
from tests.support.gateway_proc import GatewayProcess
from tests.support.node_emitter import NodeEmitter
from tests.support.sio_client import NodeClients


@pytest.fixture(scope="module")
def bridge(producers: Producers) -> GatewayProcess:
    proc = producers.start_bridge()
    wait_for(lambda: active(proc), "the only bridge holds the lease")
    return proc


def ns(events: list) -> list[int]:  # type: ignore[type-arg]
    return sorted(e.payload["n"] for e in events)


def test_to_a_user_a_room_and_everyone(node_clients: NodeClients, producers: Producers,
                                       bridge: GatewayProcess, emitter: NodeEmitter) -> None:
    a, b, c = uid(), uid(), uid("c")
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a, (c,)))
    connect(node_clients, "b", producers.replicas[1].ns_url, token(b, (c,)))
    emitter.emit(EVENT, {"n": 1}, to=[f"user:{a}"])
    emitter.emit(EVENT, {"n": 2}, to=[f"classroom:{c}"])
    emitter.emit(EVENT, {"n": 3})  # io.emit: everyone
    assert ns(settle(node_clients, "a", 3)) == [1, 2, 3]
    assert ns(settle(node_clients, "b", 2)) == [2, 3]
    got = node_clients.events("a", EVENT)[0]
    assert got.payload == {"n": 1}


def test_several_rooms_with_except_reach_each_socket_once(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess, emitter: NodeEmitter) -> None:
    c1, c2, c3 = uid("c"), uid("c"), uid("c")
    both, only2, excluded, outside = uid(), uid(), uid(), uid()
    connect(node_clients, "both", producers.replicas[0].ns_url, token(both, (c1, c2)))
    connect(node_clients, "only2", producers.replicas[1].ns_url, token(only2, (c2,)))
    connect(node_clients, "excluded", producers.replicas[1].ns_url, token(excluded, (c1, c3)))
    connect(node_clients, "outside", producers.replicas[0].ns_url, token(outside, (c3,)))
    emitter.emit(EVENT, {"n": 1}, to=[f"classroom:{c1}", f"classroom:{c2}"], except_=[f"classroom:{c3}"])
    # io.except(room).emit: everyone but that room
    emitter.emit(EVENT, {"n": 2}, except_=[f"user:{only2}", f"classroom:{c3}"])
    assert ns(settle(node_clients, "both", 2)) == [1, 2]
    assert ns(settle(node_clients, "only2", 1)) == [1]
    node_clients.assert_no_event("excluded", EVENT, within=0.3)
    node_clients.assert_no_event("outside", EVENT, within=0.3)


def test_sockets_join_leave_and_disconnect_by_room(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess, emitter: NodeEmitter) -> None:
    c, other, quiz = uid("c"), uid("c"), f"quiz:{uid()}"
    a, b, d = uid(), uid(), uid()
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a, (c,)))
    connect(node_clients, "b", producers.replicas[1].ns_url, token(b, (c,)))
    connect(node_clients, "d", producers.replicas[1].ns_url, token(d, (other,)))

    # io.in(room).socketsJoin(...): the policy still decides (never another user's room)
    emitter.sockets_join([quiz, f"user:{d}"], to=[f"classroom:{c}"], except_=[f"user:{b}"])
    wait_for(lambda: quiz in rooms_of(node_clients, "a"), "a joins the quiz room")
    assert f"user:{d}" not in rooms_of(node_clients, "a")
    emitter.emit(EVENT, {"n": 1}, to=[quiz])
    assert ns(settle(node_clients, "a", 1)) == [1]
    assert quiz not in rooms_of(node_clients, "b")  # excepted
    assert quiz not in rooms_of(node_clients, "d")  # not in the classroom

    emitter.sockets_join([quiz], to=[f"classroom:{c}"])
    wait_for(lambda: quiz in rooms_of(node_clients, "b"), "b joins the quiz room")
    emitter.sockets_leave([quiz], to=[f"classroom:{c}"])
    wait_for(lambda: quiz not in rooms_of(node_clients, "a") and quiz not in rooms_of(node_clients, "b"),
             "both leave the quiz room")
    emitter.emit(EVENT, {"n": 2}, to=[quiz])
    emitter.emit(EVENT, {"n": 3}, to=[f"classroom:{c}"])
    assert ns(settle(node_clients, "a", 2)) == [1, 3]
    assert ns(settle(node_clients, "b", 1)) == [3]

    emitter.disconnect_sockets(to=[f"classroom:{c}"])
    for name in ("a", "b"):
        gone = node_clients.wait_disconnected(name, timeout=10)
        assert gone["reason"] == "io server disconnect", gone
        assert gone["retrying"] is False, gone
    emitter.emit(EVENT, {"n": 4})
    node_clients.wait_events("d", EVENT, 1)  # d, in no room of the request, stays


def test_a_recovering_client_gets_the_bridged_events_it_missed(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess, emitter: NodeEmitter,
        nowhere: str) -> None:
    a, c = uid(), uid("c")
    first = connect(node_clients, "a", producers.replicas[0].ns_url, token(a, (c,)))
    emitter.emit(EVENT, {"n": 0}, to=[f"user:{a}"])
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    before = metric(bridge, "bridge_messages_bridged_total", source="emitter")
    emitter.emit(EVENT, {"n": 1}, to=[f"user:{a}"])
    emitter.emit(EVENT, {"n": 2}, to=[f"classroom:{c}"])
    emitter.emit(EVENT, {"n": 3}, to=[f"user:{a}", f"classroom:{c}"])
    wait_for(lambda: metric(bridge, "bridge_messages_bridged_total", source="emitter") >= before + 3,
             "the bridge put the three events on the bus")
    back = come_back(node_clients, "a", producers.replicas[1])
    assert (back["recovered"], back["sid"]) == (True, first["sid"]), back
    assert ns(settle(node_clients, "a", 4)) == [0, 1, 2, 3]


def test_what_the_bridge_refuses_is_counted_and_it_keeps_going(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess, emitter: NodeEmitter) -> None:
    a = uid()
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a))
    ns_before = refused(bridge, "emitter", "namespace")
    emitter.emit(EVENT, {"n": 1}, to=[f"user:{a}"], nsp="/")
    wait_for(lambda: refused(bridge, "emitter", "namespace") == ns_before + 1, "the wrong namespace refused")

    req_before = refused(bridge, "emitter_request", "unsupported_request")
    emitter.server_side_emit("hello", 1)
    wait_for(lambda: refused(bridge, "emitter_request", "unsupported_request") == req_before + 1,
             "serverSideEmit refused")

    args_before = refused(bridge, "emitter", "arguments")
    emitter.emit(EVENT, {"n": 2}, "extra", to=[f"user:{a}"])
    wait_for(lambda: refused(bridge, "emitter", "arguments") == args_before + 1, "two arguments refused")

    invalid_before = refused(bridge, "emitter", "invalid")
    emitter.emit("bad name!", {"n": 3}, to=[f"user:{a}"])
    wait_for(lambda: refused(bridge, "emitter", "invalid") == invalid_before + 1, "a bad event name refused")

    producers.redis.client().publish(f"{producers.emitter_prefix}#/notifications#", b"\x93\xc1garbage")
    emitter.emit(EVENT, {"n": 4}, to=[f"user:{a}"])
    assert ns(settle(node_clients, "a", 1)) == [4]
    assert bridge.alive()
