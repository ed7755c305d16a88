"""emit_rooms, sockets_join, sockets_leave and disconnect_room (sync and async) on a real
redis-server: what reaches the rooms' sharded channels and streams."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis

from publisher import AsyncPublisher, Publisher
from publisher.envelope import BusNames, Event, RoomControl, decode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def r(shared_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=shared_redis.port)
    yield client
    client.close()


def listen(r: redis.Redis, names: BusNames, *rooms: str) -> redis.client.PubSub:
    pubsub = r.pubsub()
    for room in rooms:
        pubsub.ssubscribe(names.room_channel(room))
        assert pubsub.get_sharded_message(timeout=2) is not None  # the confirmation
    return pubsub


def next_message(pubsub: redis.client.PubSub) -> Event | object:
    message = pubsub.get_sharded_message(timeout=2)
    assert message is not None
    return decode(message["data"])


def test_sync(shared_redis: RedisServer, r: redis.Redis, prefix: str) -> None:
    names = BusNames(prefix, prefix)
    pubsub = listen(r, names, "classroom:1", "classroom:2", "*")
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as pub:
        at = pub.emit_rooms("news", {"n": 1}, ["classroom:2", "classroom:1"], except_rooms="user:3")
        assert set(at) == {"classroom:1", "classroom:2"}
        got = [next_message(pubsub), next_message(pubsub)]
        assert sorted((e.room, e.position) for e in got if isinstance(e, Event)) == sorted(at.items())
        assert r.xlen(names.history_key("classroom:1")) == 1

        joined = pub.sockets_join("classroom:1", ["quiz:9"], except_rooms=["user:3"])
        control = next_message(pubsub)
        assert isinstance(control, RoomControl)
        assert (control.kind, control.room, control.excluded) == ("rjoin", "classroom:1", frozenset({"user:3"}))
        assert {room: str(p) for room, p in control.rooms} == joined

        pub.disconnect_room(None)
        control = next_message(pubsub)
        assert isinstance(control, RoomControl)
        assert (control.kind, control.room) == ("rkick", None)
    pubsub.close()


def test_async(shared_redis: RedisServer, r: redis.Redis, prefix: str) -> None:
    names = BusNames(prefix, prefix)
    pubsub = listen(r, names, "classroom:1", "*")

    async def run() -> None:
        async with AsyncPublisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as pub:
            at = await pub.emit_rooms("news", 1, None, except_rooms=["classroom:9"])
            assert list(at) == ["*"]
            await pub.sockets_leave("classroom:1", "quiz:9")

    asyncio.run(run())
    event = next_message(pubsub)
    assert isinstance(event, Event)
    assert event.scope is not None
    assert event.scope.excluded == frozenset({"classroom:9"})
    control = next_message(pubsub)
    assert isinstance(control, RoomControl)
    assert control.kind == "rleave"
    pubsub.close()


def test_emit_rooms_takes_rooms_that_can_be_read_once(shared_redis: RedisServer, prefix: str) -> None:
    """A generator of rooms (an `Iterable`) is read once: the positions name its rooms."""
    rooms = ["classroom:2", "classroom:1"]
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as pub:
        assert set(pub.emit_rooms("news", 1, (room for room in rooms))) == set(rooms)

    async def run() -> set[str]:
        async with AsyncPublisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as pub:
            return set(await pub.emit_rooms("news", 1, iter(rooms), except_rooms=iter(["user:3"])))

    assert asyncio.run(run()) == set(rooms)
