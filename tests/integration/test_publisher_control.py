"""join/leave/disconnect_user and presence on a real redis-server, with sessions and replica
heartbeats written the way docs/wire-protocol.md (version 2) says a gateway replica writes them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from publisher import Publisher, parse_position
from publisher.envelope import BusNames, Control, decode
from publisher.session import SessionRecord
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def names(prefix: str) -> BusNames:
    return BusNames(prefix, prefix)


@pytest.fixture
def pub(shared_redis: RedisServer, prefix: str) -> Iterator[Publisher]:
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as publisher:
        yield publisher


@pytest.fixture
def r(shared_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=shared_redis.port, decode_responses=True)
    yield client
    client.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def save_session(r: redis.Redis, names: BusNames, pid: str, user: str, rooms: list[str], *,
                 expires_in_ms: int = 120_000) -> None:
    """A session as a replica saves it: the hash, and the user's index pid -> when it expires."""
    record = SessionRecord(f"sid-{pid}", user, tuple(rooms), dict.fromkeys(rooms, "1-1"), now_ms(), now_ms())
    r.hset(names.session_key(user, pid), mapping=record.to_hash())
    r.pexpire(names.session_key(user, pid), 120_000)
    r.zadd(names.user_sessions_key(user), {pid: now_ms() + expires_in_ms})


def session(r: redis.Redis, names: BusNames, user: str, pid: str) -> SessionRecord:
    return SessionRecord.from_hash(r.hgetall(names.session_key(user, pid)))


def test_join_and_leave_edit_every_saved_session_of_the_user(
        pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    save_session(r, names, "p1", "42", ["user:42", "classroom:1"])
    save_session(r, names, "p2", "42", ["user:42"])
    save_session(r, names, "p3", "43", ["user:43", "classroom:1"])
    at2 = pub.emit("x", 1, room="classroom:2").result()

    joined = pub.join(42, ["classroom:2", "classroom:1"])
    assert joined["classroom:2"] == at2
    p1, p2 = session(r, names, "42", "p1"), session(r, names, "42", "p2")
    assert p1.rooms == ("user:42", "classroom:1", "classroom:2")
    assert p1.starts == {"user:42": "1-1", "classroom:1": "1-1", "classroom:2": at2}  # classroom:1 kept its start
    assert p1.extra == ("classroom:2",)  # entered through a producer: checked again on recovery
    assert p2.rooms == ("user:42", "classroom:2", "classroom:1")
    assert p2.starts["classroom:1"] == joined["classroom:1"]
    assert p2.extra == ("classroom:2", "classroom:1")

    at1 = pub.emit("x", 2, room="classroom:1").result()
    left = pub.leave(42, ["classroom:1", "classroom:9"])
    assert left["classroom:1"] == at1  # replayed up to there, not after
    p1, p2 = session(r, names, "42", "p1"), session(r, names, "42", "p2")
    assert p1.rooms == p2.rooms == ("user:42", "classroom:2")
    assert p1.left == p2.left == {"classroom:1": at1}
    assert p2.extra == ("classroom:2",)
    assert "classroom:9" not in p1.left  # never in it

    assert session(r, names, "43", "p3").rooms == ("user:43", "classroom:1")  # someone else's
    assert p1.sid == "sid-p1"  # other fields untouched
    assert 0 < r.pttl(names.session_key("42", "p1")) <= 120_000  # and its expiry kept


def test_a_room_joined_again_after_a_leave_starts_afresh(
        pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    save_session(r, names, "p1", "7", ["user:7"])
    pub.join(7, "quiz:9")
    pub.emit("x", 1, room="quiz:9").result()
    pub.leave(7, "quiz:9")
    assert "quiz:9" in session(r, names, "7", "p1").left
    again = pub.join(7, "quiz:9")
    record = session(r, names, "7", "p1")
    assert record.rooms == ("user:7", "quiz:9")
    assert record.starts["quiz:9"] == again["quiz:9"]
    assert "quiz:9" not in record.left


def test_the_users_own_room_is_never_left(pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    save_session(r, names, "p1", "42", ["user:42", "classroom:1"])
    with pytest.raises(ValueError, match="cannot be left"):
        pub.leave(42, ["classroom:1", "user:42"])
    assert session(r, names, "42", "p1").rooms == ("user:42", "classroom:1")  # nothing was sent


def test_expired_sessions_are_left_alone(pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    r.zadd(names.user_sessions_key("42"), {"gone": now_ms() + 60_000})  # listed, its hash expired
    save_session(r, names, "old", "42", ["user:42"], expires_in_ms=-1_000)  # its time is over
    pub.join(42, "classroom:1")
    assert not r.exists(names.session_key("42", "gone"))
    assert session(r, names, "42", "old").rooms == ("user:42",)


def test_join_with_no_sessions_only_publishes(pub: Publisher, r: redis.Redis, names: BusNames,
                                              prefix: str) -> None:
    pubsub = r.pubsub()
    pubsub.ssubscribe(names.room_channel("user:42"))
    assert pubsub.get_sharded_message(timeout=2) is not None
    pub.join(42, "classroom:1")
    message = pubsub.get_sharded_message(timeout=2)
    assert message is not None
    control = decode(message["data"].encode())
    assert isinstance(control, Control)
    assert (control.kind, control.user, [room for room, _ in control.rooms]) == ("join", "42", ["classroom:1"])
    assert r.keys(f"{prefix}:*") == []
    pubsub.close()


def test_disconnect_user_deletes_sessions_revokes_and_kicks(
        pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    save_session(r, names, "p1", "42", ["user:42"])
    save_session(r, names, "p2", "42", ["user:42"])
    save_session(r, names, "p3", "43", ["user:43"])
    pubsub = r.pubsub()
    pubsub.ssubscribe(names.room_channel("user:42"))
    assert pubsub.get_sharded_message(timeout=2) is not None
    before = now_ms()
    assert pub.disconnect_user(42) == 2
    after = now_ms()

    assert not r.exists(names.session_key("42", "p1"), names.session_key("42", "p2"),
                        names.user_sessions_key("42"))
    assert r.exists(names.session_key("43", "p3"), names.user_sessions_key("43")) == 2
    revoked = r.get(names.revoked_key("42"))
    assert revoked is not None
    assert before - 1000 <= int(revoked) <= after + 1000
    assert 239_000 < r.pttl(names.revoked_key("42")) <= 240_000
    message = pubsub.get_sharded_message(timeout=2)
    assert message is not None
    kick = decode(message["data"].encode())
    assert isinstance(kick, Control)
    assert (kick.kind, kick.user, kick.rooms) == ("kick", "42", ())
    pubsub.close()


def test_revocation_lives_twice_the_recovery_window(shared_redis: RedisServer, r: redis.Redis,
                                                    names: BusNames, prefix: str) -> None:
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix, recovery_window_s=30) as pub:
        pub.disconnect_user("u1")
    assert 59_000 < r.pttl(names.revoked_key("u1")) <= 60_000


def heartbeat(r: redis.Redis, names: BusNames, replica: str, users: list[str], age_ms: int = 0) -> None:
    """What a replica writes: its heartbeat, its user count, and itself in each user's set."""
    r.zadd(names.replicas_key(), {replica: now_ms() - age_ms})
    r.hset(names.replica_users_key(), replica, len(users))
    for user in users:
        r.sadd(names.presence_key(user), replica)


def test_presence_counts_live_replicas_only(pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    assert pub.is_online(1) is False
    assert pub.online_count() == 0

    heartbeat(r, names, "a", ["1", "2"])
    assert pub.is_online(1) is True
    assert pub.is_online("2") is True
    assert pub.is_online(3) is False
    assert pub.online_count() == 2

    heartbeat(r, names, "b", ["2", "3"], age_ms=1_000)
    heartbeat(r, names, "stale", ["4", "1"], age_ms=20_000)  # crashed 20 s ago
    assert pub.is_online(3) is True
    assert pub.is_online(4) is False  # its only replica is not live
    assert pub.is_online(1) is True  # a live replica holds it too
    # each live replica's count, added: user 2, on a and b, counts twice; the stale one not at all
    assert pub.online_count() == 4


def test_presence_with_only_stale_replicas(pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    heartbeat(r, names, "old", ["1"], age_ms=15_001)
    assert pub.is_online(1) is False
    assert pub.online_count() == 0


def test_presence_with_an_empty_live_replica(pub: Publisher, r: redis.Redis, names: BusNames) -> None:
    heartbeat(r, names, "idle", [])
    assert pub.online_count() == 0
    heartbeat(r, names, "busy", ["7"])
    assert pub.online_count() == 1
    assert pub.is_online(7) is True


def test_positions_returned_are_positions(pub: Publisher) -> None:
    joined = pub.join("u", ["lobby", "quiz:1"])
    assert list(joined) == ["lobby", "quiz:1"]
    for at in joined.values():
        parse_position(at)
