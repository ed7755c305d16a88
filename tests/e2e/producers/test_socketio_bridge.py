"""The real python-socketio managers in write-only mode (`RedisManager`, `AsyncRedisManager`),
unchanged but for the namespace, reaching the real socket.io-client through the bridge; pickles
and what names one socket by sid refused, counted, and the bridge keeps going.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
import socketio

from publisher import Publisher
from tests.e2e.producers.support import Producers, active, refused, wait_for
from tests.e2e.recovery.support import EVENT, connect, rooms_of, settle, token, uid
from tests.support.gateway_proc import GatewayProcess
from tests.support.sio_client import NodeClients

NS = "/notifications"


@pytest.fixture(scope="module")
def bridge(producers: Producers) -> GatewayProcess:
    proc = producers.start_bridge(BRIDGE_SOURCES="python-socketio")
    wait_for(lambda: active(proc), "the only bridge holds the lease")
    return proc


@pytest.fixture(scope="module")
def manager(producers: Producers) -> socketio.RedisManager:
    return socketio.RedisManager(producers.redis.url, channel=producers.socketio_channel, write_only=True)


def ns(events: list) -> list[int]:  # type: ignore[type-arg]
    return sorted(e.payload["n"] for e in events)


def test_redis_manager_emits_to_a_user_several_rooms_and_everyone(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess,
        manager: socketio.RedisManager) -> None:
    a, b, c1, c2 = uid(), uid(), uid("c"), uid("c")
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a, (c1, c2)))
    connect(node_clients, "b", producers.replicas[1].ns_url, token(b, (c2,)))
    manager.emit(EVENT, {"n": 1}, namespace=NS, room=f"user:{a}")
    manager.emit(EVENT, {"n": 2}, namespace=NS, to=[f"classroom:{c1}", f"classroom:{c2}"])
    manager.emit(EVENT, {"n": 3}, namespace=NS)
    assert ns(settle(node_clients, "a", 3)) == [1, 2, 3]
    assert ns(settle(node_clients, "b", 2)) == [2, 3]


def test_async_redis_manager_emits_and_closes_a_room(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess) -> None:
    a, quiz = uid(), f"quiz:{uid()}"
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a))
    with Publisher(producers.redis.url, key_prefix=producers.bus_env["KEY_PREFIX"],
                   channel_prefix=producers.bus_env["CHANNEL_PREFIX"]) as pub:
        pub.join(a, quiz)
    wait_for(lambda: quiz in rooms_of(node_clients, "a"), "a joins the quiz room")

    async def produce() -> None:
        mgr = socketio.AsyncRedisManager(producers.redis.url, channel=producers.socketio_channel,
                                         write_only=True)
        await mgr.emit(EVENT, {"n": 1}, namespace=NS, room=quiz)
        await mgr.close_room(quiz, namespace=NS)
        await mgr.redis.aclose()

    asyncio.run(produce())
    assert ns(settle(node_clients, "a", 1)) == [1]
    wait_for(lambda: quiz not in rooms_of(node_clients, "a"), "close_room takes a out of the room")


def test_pickles_sids_and_other_namespaces_are_refused_and_counted(
        node_clients: NodeClients, producers: Producers, bridge: GatewayProcess,
        manager: socketio.RedisManager) -> None:
    a = uid()
    connect(node_clients, "a", producers.replicas[0].ns_url, token(a))
    source = "python_socketio"
    before = {r: refused(bridge, source, r) for r in ("pickle", "namespace", "sid_target")}
    # What an old python-socketio published: never unpickled (a pickle can run code).
    message = {"method": "emit", "event": EVENT, "data": [{"n": 9}], "namespace": NS,
               "room": f"user:{a}", "skip_sid": None, "callback": None, "host_id": "x"}
    producers.redis.client().publish(producers.socketio_channel, pickle.dumps(message))
    manager.emit(EVENT, {"n": 8}, namespace="/", room=f"user:{a}")  # python-socketio's default namespace
    manager.enter_room("someSid", NS, "quiz:1")  # a sid of another server
    wait_for(lambda: all(refused(bridge, source, r) == before[r] + 1 for r in before),
             "pickle, namespace and sid refusals counted")
    manager.emit(EVENT, {"n": 1}, namespace=NS, room=f"user:{a}")
    assert ns(settle(node_clients, "a", 1)) == [1]
