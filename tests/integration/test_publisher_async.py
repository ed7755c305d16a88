"""AsyncPublisher on a real redis-server: the same basics as the sync one, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio

from publisher import AsyncPublisher, Message, PublishError, parse_position
from publisher.envelope import BusNames, Control, Event, decode
from publisher.session import SessionRecord
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

NAMES = BusNames()


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
        # redis.asyncio reads sharded messages ("smessage") through get_message
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            assert message["type"] == "smessage", message
            return message["data"]  # type: ignore[no-any-return]
    raise AssertionError("nothing arrived")


async def stream_ids(r: redis.asyncio.Redis, key: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await r.xrange(key)]


async def test_emit_reaches_subscribers_and_history(pub: AsyncPublisher,
                                                    r: redis.asyncio.Redis) -> None:
    pubsub = r.pubsub()
    await pubsub.ssubscribe(NAMES.room_channel("user:42"))
    data = {"amount": 50, "reason": "quiz", "newBalance": 1250}
    position = await pub.emit("coins:earned", data, user=42)
    event = decode(await next_message(pubsub))
    assert isinstance(event, Event)
    assert (event.name, event.data, event.room, event.position) == ("coins:earned", data, "user:42", position)
    assert await stream_ids(r, "ngw:{user:42}:h") == [position]
    await pubsub.aclose()


async def test_helpers_batches_and_order(pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    positions = [
        await pub.coins_earned(1, amount=1, reason="r", new_balance=2),
        await pub.achievement_unlocked(1, achievement_id="a", name="n", description="d",
                                       icon="i", xp_reward=5),
        await pub.notification_read(1, notification_id="n1"),
        *await pub.emit_many([Message("x", i, user=1) for i in range(5)]),
    ]
    async with pub.pipeline() as batch:
        batch.emit("y", 1, user=1)
        batch.rank_promoted(1, old_rank={"name": "a", "level": 1},
                            new_rank={"name": "b", "level": 2}, xp_required=3)
        assert len(batch) == 2
    positions += batch.positions
    assert await stream_ids(r, "ngw:{user:1}:h") == positions
    assert [parse_position(p) for p in positions] == sorted(parse_position(p) for p in positions)


async def test_validation_errors_are_raised_before_sending(pub: AsyncPublisher,
                                                           r: redis.asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="coins:earned: newBalance must be an integer"):
        await pub.coins_earned(1, amount=1, reason="r", new_balance="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        async with pub.pipeline() as batch:
            batch.emit("connect", {}, user=1)
    with pytest.raises(ValueError, match="cannot be left"):
        await pub.leave(1, "user:1")
    assert await r.keys("*") == []


async def test_control_and_presence(pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    pubsub = r.pubsub()
    await pubsub.ssubscribe(NAMES.room_channel("user:7"))
    now = int(time.time() * 1000)
    record = SessionRecord("sid", "7", ("user:7",), {"user:7": "1-1"}, now, now)
    await r.hset(NAMES.session_key("7", "p1"), mapping=record.to_hash())  # type: ignore[arg-type]
    await r.zadd(NAMES.user_sessions_key("7"), {"p1": now + 60_000})

    joined = await pub.join(7, "classroom:3")
    stored = SessionRecord.from_hash({k.decode(): v.decode() for k, v in
                                      (await r.hgetall(NAMES.session_key("7", "p1"))).items()})
    assert stored.rooms == ("user:7", "classroom:3")
    assert stored.starts["classroom:3"] == joined["classroom:3"]
    await pub.leave(7, "classroom:3")
    assert orjson.loads(await r.hget(NAMES.session_key("7", "p1"), "rooms")) == ["user:7"]
    assert await pub.disconnect_user(7) == 1
    assert not await r.exists(NAMES.session_key("7", "p1"), NAMES.user_sessions_key("7"))
    assert await r.exists(NAMES.revoked_key("7"))
    kinds = []
    for _ in range(3):
        control = decode(await next_message(pubsub))
        assert isinstance(control, Control)
        kinds.append(control.kind)
    assert kinds == ["join", "leave", "kick"]
    await pubsub.aclose()

    for replica in ("a", "b"):
        await r.zadd(NAMES.replicas_key(), {replica: int(time.time() * 1000)})
        await r.hset(NAMES.replica_users_key(), replica, 2)
    await r.sadd(NAMES.presence_key("7"), "a", "b")
    assert await pub.is_online(7) is True
    assert await pub.is_online(9) is False
    assert await pub.online_count() == 4  # each live replica's count: a user on two counts twice


async def test_redis_down_then_back(redis_server: RedisServer, pub: AsyncPublisher) -> None:
    await pub.emit("x", 1, user=1)
    await asyncio.to_thread(redis_server.kill)
    with pytest.raises(PublishError) as info:
        await pub.emit("x", 2, user=1)
    assert isinstance(info.value, ConnectionError)
    await asyncio.to_thread(redis_server.start)
    parse_position(await pub.emit("x", 3, user=1))


async def test_concurrent_emits(pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    positions = await asyncio.gather(*(pub.emit("x", i, user=i % 3) for i in range(50)))
    for user in range(3):  # positions are per room: rooms may share one, a room never
        assert sorted(await stream_ids(r, f"ngw:{{user:{user}}}:h")) == sorted(positions[user::3])


async def test_a_cancelled_emit_leaves_no_reply_behind(pub: AsyncPublisher,
                                                       r: redis.asyncio.Redis) -> None:
    """Cancelled while waiting for Redis, the emit's connection is dropped: its late reply
    must never be read as the answer to the next emit."""
    before = parse_position(await pub.emit("x", 0, user=1))
    await r.execute_command("CLIENT", "PAUSE", "400", "ALL")
    task = asyncio.ensure_future(pub.emit("x", "cancelled", user=1))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # the pause is over
    after = await pub.emit("x", 2, user=1)
    assert parse_position(after) > before
    # The position returned is this emit's own: the newest entry, holding its payload.
    [(entry_id, fields)] = await r.xrevrange("ngw:{user:1}:h", count=1)
    assert entry_id.decode() == after
    assert orjson.loads(fields[b"m"])["d"] == 2


async def test_a_given_client_is_left_open(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=redis_server.port)
    async with AsyncPublisher(client=client, key_prefix="given") as pub:
        await pub.emit("x", 1, user=1)
        assert pub.client is client
    assert await client.xlen("given:{user:1}:h") == 1
    await client.aclose()


async def test_emits_of_one_loop_turn_leave_in_one_script_call(
        pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    """Auto-pipelining: concurrent emits issued in one loop turn share a write and a publish.lua
    call (one Redis: any rooms); each await still returns its own position, in emit order."""
    await pub.emit("warm", 0, user=1)  # connected, the script loaded
    await r.config_resetstat()
    positions = await asyncio.gather(*(pub.emit("x", i, user=i % 5) for i in range(50)))
    stats = await r.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    for user in range(5):
        stored = [entry_id.decode() for entry_id, _ in await r.xrange(f"ngw:{{user:{user}}}:h")]
        assert stored[-10:] == list(positions[user::5])


async def test_a_failed_write_fails_its_awaits_and_the_next_goes_on(
        pub: AsyncPublisher, r: redis.asyncio.Redis) -> None:
    await r.set("ngw:{user:1}:h", "not a stream")
    outcomes = await asyncio.gather(pub.emit("x", 1, user=1), pub.emit("x", 2, user=2),
                                    return_exceptions=True)
    assert all(isinstance(o, PublishError) and "WRONGTYPE" in str(o) for o in outcomes)
    await r.delete("ngw:{user:1}:h")
    assert parse_position(await pub.emit("x", 3, user=1))


async def test_close_waits_for_the_emits_made_before_it_not_for_later_ones(
        redis_server: RedisServer, r: redis.asyncio.Redis) -> None:
    """Requests that keep arriving (each an emit of its own, issued while a write is in flight)
    keep the sender's writer busy for as long as they come: close, like the sync flush, waits
    for what was emitted before it, not until nobody emits any more."""
    pub = AsyncPublisher(redis_server.url)
    stop = asyncio.Event()
    requests: set[asyncio.Task[str]] = set()

    async def arrive() -> None:
        while not stop.is_set():
            task = asyncio.create_task(pub.emit("x", "load", room="quiz:load"))
            requests.add(task)
            task.add_done_callback(requests.discard)
            await asyncio.sleep(0)

    load = asyncio.create_task(arrive())
    mine = asyncio.create_task(pub.emit("x", "mine", user=5))
    await asyncio.sleep(0.05)  # the load is on
    try:
        await asyncio.wait_for(pub._sender.close(), 5)
        assert mine.done()
    finally:
        stop.set()
        await load
        await asyncio.gather(*requests, return_exceptions=True)
        await pub.close()
    assert await stream_ids(r, "ngw:{user:5}:h") == [mine.result()]
