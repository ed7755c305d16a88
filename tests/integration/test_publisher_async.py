"""AsyncPublisher on a real redis-server: the same basics as the sync one, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio

from publisher import AsyncPublisher, Message, PublishError, parse_offset
from publisher.envelope import Control, Event, decode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def pub(redis_server: RedisServer) -> AsyncIterator[AsyncPublisher]:
    async with AsyncPublisher(redis_server.url) as publisher:
        yield publisher


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(port=redis_server.port)
    yield client
    await client.aclose()


async def next_message(pubsub: redis.asyncio.client.PubSub, timeout: float = 2.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message["data"]  # type: ignore[no-any-return]
    raise AssertionError("nothing arrived")


async def test_emit_reaches_subscribers_and_history(pub: AsyncPublisher,
                                                    r: redis.asyncio.Redis) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe("socket.io#/notifications#user:42#")
    data = {"amount": 50, "reason": "quiz", "newBalance": 1250}
    offset = await pub.emit("coins:earned", data, user=42)
    event = decode(await next_message(pubsub))
    assert isinstance(event, Event)
    assert (event.ev, event.d, event.r, event.o) == ("coins:earned", data, "user:42", offset)
    entries = await r.xrange("ngw:h:user:42")
    assert [e[0].decode() for e in entries] == [parse_offset(offset).stream_id]
    await pubsub.aclose()


async def test_helpers_batches_and_order(pub: AsyncPublisher) -> None:
    offsets = [
        await pub.coins_earned(1, amount=1, reason="r", new_balance=2),
        await pub.achievement_unlocked(1, achievement_id="a", name="n", description="d",
                                       icon="i", xp_reward=5),
        await pub.notification_read(1, notification_id="n1"),
        *await pub.emit_many([Message("x", i, room="classroom:1") for i in range(5)]),
    ]
    async with pub.pipeline() as batch:
        batch.emit("y", 1, broadcast=True)
        batch.rank_promoted(2, old_rank={"name": "a", "level": 1},
                            new_rank={"name": "b", "level": 2}, xp_required=3)
        assert len(batch) == 2
    offsets += batch.offsets
    assert [parse_offset(o).seq for o in offsets] == list(range(1, 11))


async def test_validation_errors_are_raised_before_sending(pub: AsyncPublisher,
                                                           r: redis.asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="coins:earned: newBalance must be an integer"):
        await pub.coins_earned(1, amount=1, reason="r", new_balance="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        async with pub.pipeline() as batch:
            batch.emit("connect", {}, user=1)
    assert not await r.exists("ngw:clock")


async def test_control_and_presence(pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe("socket.io#/notifications#user:7#")
    await r.hset("ngw:s:p1", mapping={"user": "7", "rooms": orjson.dumps(["user:7"])})
    await r.zadd("ngw:sessions:7", {"p1": 1})

    await pub.join(7, "classroom:3")
    assert orjson.loads(await r.hget("ngw:s:p1", "rooms")) == ["user:7", "classroom:3"]
    await pub.leave(7, "classroom:3")
    assert orjson.loads(await r.hget("ngw:s:p1", "rooms")) == ["user:7"]
    await pub.disconnect_user(7)
    assert not await r.exists("ngw:s:p1", "ngw:sessions:7")
    assert await r.exists("ngw:revoked:7")
    kinds = []
    for _ in range(3):
        control = decode(await next_message(pubsub))
        assert isinstance(control, Control)
        kinds.append(control.k)
    assert kinds == ["join", "leave", "kick"]
    await pubsub.aclose()

    await r.zadd("ngw:replicas", {"a": int(time.time() * 1000)})
    await r.sadd("ngw:online:a", "7", "8")
    assert await pub.is_online(7) is True
    assert await pub.is_online(9) is False
    assert await pub.online_count() == 2


async def test_redis_down_then_back(redis_server: RedisServer, pub: AsyncPublisher) -> None:
    await pub.emit("x", 1, user=1)
    await asyncio.to_thread(redis_server.kill)
    with pytest.raises(PublishError) as info:
        await pub.emit("x", 2, user=1)
    assert isinstance(info.value, ConnectionError)
    await asyncio.to_thread(redis_server.start)
    assert parse_offset(await pub.emit("x", 3, user=1)).seq == 1


async def test_concurrent_emits(pub: AsyncPublisher) -> None:
    offsets = await asyncio.gather(*(pub.emit("x", i, user=i % 3) for i in range(50)))
    assert sorted(parse_offset(o).seq for o in offsets) == list(range(1, 51))


async def test_a_cancelled_emit_leaves_no_reply_behind(pub: AsyncPublisher,
                                                       r: redis.asyncio.Redis) -> None:
    """Cancelled while waiting for Redis, the emit's connection is dropped: its late reply
    must never be read as the answer to the next emit."""
    before = parse_offset(await pub.emit("x", 0, user=1))
    await r.execute_command("CLIENT", "PAUSE", "400", "ALL")
    task = asyncio.ensure_future(pub.emit("x", "cancelled", user=1))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # the pause is over
    after = parse_offset(await pub.emit("x", 2, user=1))
    assert after.seq > before.seq
    # The offset returned is this emit's own: the newest entry, holding its payload.
    [(entry_id, fields)] = await r.xrevrange("ngw:h:user:1", count=1)
    assert entry_id.decode() == after.stream_id
    assert orjson.loads(fields[b"m"])["d"] == 2


async def test_a_given_client_is_left_open(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    async with AsyncPublisher(client=client, key_prefix="given") as pub:
        await pub.emit("x", 1, user=1)
    assert await client.xlen("given:h:user:1") == 1
    await client.aclose()
