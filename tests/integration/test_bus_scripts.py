"""The bus's Lua scripts (version 2, docs/wire-protocol.md) against a real redis-server:
every operation of writes.lua and its grouping per slot, history.lua's exact-or-refused rules,
sessions.lua, heartbeat.lua, and the publisher's position.lua and publish.lua."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from publisher import Publisher
from publisher.envelope import BusNames, parse_position
from publisher.scripts import Script
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

NAMES = BusNames("socket.io", "p")
EMPTY = "18446744073709551615"  # "<ms>-<EMPTY>": the stream was empty (or missing) at <ms>
LIFETIME = 120_000


def script(name: str, package: str = "gateway.bus") -> str:
    """The script as Redis runs it: session field names filled in (publisher.session)."""
    return Script.load(name, package).source.decode()


def text(mapping: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in mapping.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


# -- writes.lua --------------------------------------------------------------------------------

HEAD = ["p", "rep1", 60_000, 30_000]  # key prefix, replica id, live TTL, recovery window


def saved(pid: str, user: str, created: str, *, rooms: str | None = None, starts: str = "{}") -> list[str]:
    """An "S" operation: pid user sid rooms starts left extra created alive."""
    return ["S", pid, user, f"sid-{pid}", rooms or f'["user:{user}"]', starts, "{}", "[]", created, created]


def test_writes_every_operation(r: redis.Redis) -> None:
    writes = r.register_script(script("writes.lua"))
    now = str(now_ms())
    index = NAMES.user_sessions_key("42")
    writes(keys=[index], args=[*HEAD, 100, 15_000,
                               *saved("pid1", "42", now, starts='{"user:42":"5-0"}'),
                               *saved("pid2", "42", now),
                               *saved("pid3", "42", now),
                               "O", "42",
                               "R", "pid1", "42", '["user:42","classroom:7"]', "classroom:7", "j", "6-1",
                               "R", "pid1", "42", '["user:42"]', "classroom:7", "l", "9-9",
                               "R", "pid3", "42", '["user:42","quiz:1"]', "quiz:1", "j", "",
                               "E", "pid1", "42", "123",
                               "A", "pid3", "42", "456",
                               "E", "ghost", "42", "123",
                               "R", "ghost", "42", '["user:42"]', "quiz:1", "j", "1-1",
                               "D", "pid2", "42"])
    key = NAMES.session_key("42", "pid1")
    assert key == "p:{user:42}:s:pid1"
    session = text(r.hgetall(key))
    assert session["user"] == "42"
    assert session["sid"] == "sid-pid1"
    assert session["rooms"] == '["user:42"]'
    assert orjson.loads(session["p"]) == {"user:42": "5-0", "classroom:7": "6-1"}, "starts: the join's position"
    assert orjson.loads(session["l"]) == {"classroom:7": "9-9"}, "left: the leave's position"
    assert orjson.loads(session["x"]) == [], "a room left is no longer an extra room"
    assert session["c"] == now
    assert session["t"] == "123"
    assert 0 < r.pttl(key) <= 30_000, "E: the client left, kept for the recovery window"
    pid3 = text(r.hgetall(NAMES.session_key("42", "pid3")))
    assert orjson.loads(pid3["x"]) == ["quiz:1"], "a room joined, not from the token"
    assert orjson.loads(pid3["p"]) == {}, "a join at an unknown position sets no start"
    assert pid3["t"] == "456"
    assert 30_000 < r.pttl(NAMES.session_key("42", "pid3")) <= 60_000, "A: connected, the live TTL"
    # the index holds the live sessions, each scored with when it expires
    assert sorted(r.zrange(index, 0, -1)) == [b"pid1", b"pid3"]
    assert r.zscore(index, "pid1") <= now_ms() + 30_000
    assert r.zscore(index, "pid3") > now_ms() + 30_000
    assert not r.exists(NAMES.session_key("42", "pid2")), "D: the client left for good, nothing kept"
    assert not r.exists(NAMES.session_key("42", "ghost")), "E and R never create a session (a kick deleted it)"
    assert r.zscore(index, "ghost") is None
    # presence: the user's set of replicas, with a TTL
    on = NAMES.presence_key("42")
    assert on == "p:{user:42}:on"
    assert r.smembers(on) == {b"rep1"}
    assert 0 < r.pttl(on) <= 15_000
    writes(keys=[index], args=[*HEAD, 100, 15_000, "F", "42"])
    assert r.smembers(on) == set()
    # every key written for the user is in the slot of the call's routing key
    assert {key_slot(k) for k in r.keys("p:{user:42}*")} == {key_slot(index.encode())}
    with pytest.raises(redis.ResponseError, match="unknown operation"):
        writes(keys=[index], args=[*HEAD, 100, 15_000, "Z", "x"])


def test_writes_one_call_per_slot_on_a_single_redis_carries_every_user(r: redis.Redis) -> None:
    """The replica groups operations by their user's slot; on a single Redis one call carries
    them all, and each user's keys still carry that user's hash tag."""
    writes = r.register_script(script("writes.lua"))
    now = str(now_ms())
    users = ["1", "auth0|5f7c8ec7", "jane+tag@example.com"]
    ops: list[object] = []
    for user in users:
        ops += [*saved("a", user, now), "O", user]
    writes(keys=[NAMES.user_sessions_key(users[0])], args=[*HEAD, 100, 15_000, *ops])
    for user in users:
        slot = key_slot(NAMES.user_sessions_key(user).encode())
        assert r.zrange(NAMES.user_sessions_key(user), 0, -1) == [b"a"]
        assert text(r.hgetall(NAMES.session_key(user, "a")))["user"] == user
        assert r.smembers(NAMES.presence_key(user)) == {b"rep1"}
        assert {key_slot(k) for k in r.keys(f"p:{{user:{user}}}*")} == {slot}


def test_a_users_sessions_are_capped_and_expired_ones_trimmed(r: redis.Redis) -> None:
    """Issue 12, item 1: one socket looping CONNECT/DISCONNECT made a session and an index
    member each time, and the index was never trimmed."""
    writes = r.register_script(script("writes.lua"))
    now = str(now_ms())
    index = NAMES.user_sessions_key("7")
    ops: list[object] = []
    for i in range(30):
        ops += saved(f"p{i}", "7", now)
    writes(keys=[index], args=[*HEAD, 10, 15_000, *ops])
    assert r.zcard(index) == 10
    assert len(r.keys(NAMES.session_prefix("7") + "*")) == 10, "the oldest were evicted with their records"
    r.zadd(index, {"stale": 1})  # expired long ago
    writes(keys=[index], args=[*HEAD, 10, 15_000, *saved("fresh", "7", now)])
    assert r.zscore(index, "stale") is None


# -- history.lua: exact or refused -------------------------------------------------------------


def test_history_spans_trimming_and_empty_streams(redis_server: RedisServer, r: redis.Redis) -> None:
    history = r.register_script(script("history.lua"))
    position = r.register_script(script("position.lua", "publisher"))
    room = "classroom:1"
    key = BusNames("socket.io", "q").history_key(room)
    assert key == "q:{classroom:1}:h"
    empty_at = position(keys=[key]).decode()
    assert empty_at.endswith("-" + EMPTY)

    def replay(after: str, till: str = "+", limit: int = 100_000) -> list[object]:
        return history(keys=[key], args=[after, till, LIFETIME, limit])

    assert replay(empty_at) == [1], "a missing stream from an 'empty at' position: nothing missed"
    with Publisher(redis_server.url, key_prefix="q", history_max_len=10) as pub:
        ids = [pub.emit("coins:earned", {"amount": i}, room=room).result() for i in range(5)]
        assert ids == sorted(ids, key=lambda p: tuple(map(int, p.split("-"))))
        reply = replay(ids[1], ids[3])
        assert reply[0] == 1
        assert [x.decode() for x in reply[1::2]] == ids[2:4]
        messages = [orjson.loads(m) for m in reply[2::2]]
        assert [m["d"]["amount"] for m in messages] == [2, 3]
        assert all(m["v"] == 2 and "o" not in m for m in messages), "the stream keeps the envelope without o"
        # from "empty at": every entry, since none was trimmed
        assert [x.decode() for x in replay(empty_at)[1::2]] == ids
        assert replay(empty_at, limit=2) == [0, b"too long"], "past ARGV[4] entries: refused, never cut short"
        newest = r.xrevrange(key, count=1)[0][0].decode()
        assert replay(newest) == [1], "nothing after the newest entry: complete and empty"
        # trimmed past the position: refused, never a short replay
        for i in range(300):
            pub.emit("coins:earned", {"amount": i}, room=room).result()
        assert replay(ids[0]) == [0, b"trimmed"]
        assert replay(empty_at) == [0, b"trimmed"], "entries were trimmed since it was empty"


def test_history_of_a_stream_that_is_gone(redis_server: RedisServer, r: redis.Redis) -> None:
    history = r.register_script(script("history.lua"))
    key = BusNames("socket.io", "q").history_key("quiz:9")
    with Publisher(redis_server.url, key_prefix="q") as pub:
        first = pub.emit("quiz:tick", {"n": 1}, room="quiz:9").result()
        r.delete(key)  # a flush, or a failover that lost the stream
        assert history(keys=[key], args=[first, "+", LIFETIME, 100]) == [0, b"gone"], \
            "an entry within the stream's lifetime and no stream: lost"
        old = f"{now_ms() - LIFETIME - 60_000}-0"
        assert history(keys=[key], args=[old, "+", LIFETIME, 100]) == [1], \
            "older than the lifetime: it expired after a quiet spell"
        pub.emit("quiz:tick", {"n": 2}, room="quiz:9").result()  # grown again without `first`
        assert history(keys=[key], args=[first, "+", LIFETIME, 100]) == [0, b"trimmed"]


# -- sessions.lua, heartbeat.lua, position.lua, publish.lua -------------------------------------


def test_sessions_returns_the_record_and_the_revocation(r: redis.Redis) -> None:
    sessions = r.register_script(script("sessions.lua"))
    key, revoked = NAMES.session_key("5", "pid"), NAMES.revoked_key("5")
    assert sessions(keys=[key, revoked]) == []
    r.hset(key, mapping={"user": "5", "sid": "s1"})
    reply = sessions(keys=[key, revoked])
    it = iter(reply)
    assert {k.decode(): v.decode() for k, v in zip(it, it, strict=True)} == {
        "user": "5", "sid": "s1", "revoked": ""}
    r.set(revoked, "1234")
    it = iter(sessions(keys=[key, revoked]))
    assert dict(zip(it, it, strict=True))[b"revoked"] == b"1234"


def test_heartbeat_marks_the_replica_live_and_forgets_the_silent(r: redis.Redis) -> None:
    beat = r.register_script(script("heartbeat.lua"))
    live, users = NAMES.replicas_key(), NAMES.replica_users_key()
    assert (live, users) == ("p:{replicas}:live", "p:{replicas}:users")
    now = now_ms()
    r.zadd(live, {"old": now - 10 * 15_000 - 1})
    r.hset(users, "old", 9)
    beat(keys=[live, users], args=["rep1", now, 15_000, 3])
    assert r.zscore(live, "rep1") == now
    assert r.hget(users, "rep1") == b"3"
    assert r.zscore(live, "old") is None, "silent for 10 TTLs: forgotten"
    assert r.hget(users, "old") is None, "with its count"
    beat(keys=[live, users], args=["rep1", now + 5000, 15_000, 0])
    assert r.zscore(live, "rep1") == now + 5000
    assert r.hget(users, "rep1") == b"0"


def test_position_of_a_room(r: redis.Redis) -> None:
    position = r.register_script(script("position.lua", "publisher"))
    key = NAMES.history_key("lobby")
    before = now_ms()
    empty = position(keys=[key]).decode()
    ms, seq = empty.split("-")
    assert seq == EMPTY
    assert before - 1000 <= int(ms) < now_ms(), "empty at (now - 1 ms): before any entry added from now on"
    entry = r.xadd(key, {"m": "{}"}).decode()
    assert position(keys=[key]).decode() == entry
    assert tuple(map(int, entry.split("-"))) > (int(ms), 0)


def test_publish_writes_history_and_spublishes_with_the_position(r: redis.Redis) -> None:
    publish = r.register_script(script("publish.lua", "publisher"))
    room = "user:42"
    channel, key = NAMES.room_channel(room), NAMES.history_key(room)
    assert channel == "socket.io#/notifications#{user:42}#"
    listener = r.pubsub()
    try:
        listener.ssubscribe(channel)
        assert listener.get_sharded_message(timeout=2)["type"] == "ssubscribe"
        envelope = b'{"v":2,"k":"e","t":1.5,"ev":"coins:earned","d":{"a":1},"r":"user:42"}'
        entry, receivers = publish(keys=[key], args=[1000, LIFETIME, channel, envelope])
        assert receivers == 1
        message = listener.get_sharded_message(timeout=2)
        assert message["channel"] == channel.encode()
        assert orjson.loads(message["data"]) == {**orjson.loads(envelope), "o": entry.decode()}
        [(stored_id, fields)] = r.xrange(key)
        assert (stored_id, fields) == (entry, {b"m": envelope})
        assert 0 < r.pttl(key) <= LIFETIME
        # "0": no history, but positions that still grow within the room (two in one ms differ)
        other = NAMES.history_key("quiz:1")
        at, _ = publish(keys=[other], args=[0, LIFETIME, NAMES.room_channel("quiz:1"), envelope])
        again, _ = publish(keys=[other], args=[0, LIFETIME, NAMES.room_channel("quiz:1"), envelope])
        assert parse_position(again.decode()) > parse_position(at.decode())
        assert r.xlen(other) == 0
        with pytest.raises(redis.ResponseError, match="envelope 1 must be a JSON object ending with }"):
            publish(keys=[key], args=[1000, LIFETIME, channel, b"[1]x"])
    finally:
        listener.close()


def test_publish_takes_a_batch_of_events_of_any_rooms(r: redis.Redis) -> None:
    """One call, N events (the batched interface of docs/wire-protocol.md): published in order,
    each with its own position and receivers; a bad envelope refuses the call before any XADD."""
    publish = r.register_script(script("publish.lua", "publisher"))
    rooms = ["user:1", "quiz:9", "user:1", "*"]
    listener = r.pubsub()
    try:
        listener.ssubscribe(NAMES.room_channel("user:1"))
        assert listener.get_sharded_message(timeout=2)["type"] == "ssubscribe"
        envelopes = [b'{"v":2,"k":"e","t":1.5,"ev":"x","d":{"n":%d}}' % i for i in range(4)]
        args: list[Any] = [1000, LIFETIME]
        for room, envelope in zip(rooms, envelopes, strict=True):
            args += [NAMES.room_channel(room), envelope]
        reply = publish(keys=[NAMES.history_key(room) for room in rooms], args=args)
        assert len(reply) == 8
        positions = [parse_position(p.decode()) for p in reply[0::2]]
        assert reply[1::2] == [1, 0, 1, 0], "receivers per event"
        assert positions[2] > positions[0], "two events of one room: in the call's order"
        got = [orjson.loads(listener.get_sharded_message(timeout=2)["data"]) for _ in range(2)]
        assert [(m["d"]["n"], m["o"]) for m in got] == [(0, reply[0].decode()), (2, reply[4].decode())]
        assert [fields[b"m"] for _, fields in r.xrange(NAMES.history_key("user:1"))] == \
            [envelopes[0], envelopes[2]]
        assert all(0 < r.pttl(NAMES.history_key(room)) <= LIFETIME for room in rooms)
        before = {room: r.xlen(NAMES.history_key(room)) for room in rooms}
        args[-1] = b"not json"
        with pytest.raises(redis.ResponseError, match="envelope 4 must be"):
            publish(keys=[NAMES.history_key(room) for room in rooms], args=args)
        assert {room: r.xlen(NAMES.history_key(room)) for room in rooms} == before, \
            "nothing written: every envelope is checked before the first XADD"
        assert listener.get_sharded_message(timeout=0.2) is None
    finally:
        listener.close()
