"""join/leave/disconnect_user and presence on a real redis-server, with sessions and replica
heartbeats written the way docs/wire-protocol.md says a gateway replica writes them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis

from publisher import Publisher
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pub(shared_redis: RedisServer, prefix: str) -> Iterator[Publisher]:
    with Publisher(shared_redis.url, key_prefix=prefix, channel_prefix=prefix) as publisher:
        yield publisher


@pytest.fixture
def r(shared_redis: RedisServer) -> Iterator[redis.Redis]:
    client = shared_redis.client()
    yield client
    client.close()


def save_session(r: redis.Redis, prefix: str, pid: str, user: str, rooms: list[str]) -> None:
    now = int(time.time() * 1000)
    r.hset(f"{prefix}:s:{pid}", mapping={
        "sid": f"sid-{pid}", "user": user, "rooms": orjson.dumps(rooms), "o": "e:1-1",
        "t": now, "c": now,
    })
    r.pexpire(f"{prefix}:s:{pid}", 120_000)
    r.zadd(f"{prefix}:sessions:{user}", {pid: 1})


def session_rooms(r: redis.Redis, prefix: str, pid: str) -> list[str]:
    raw = r.hget(f"{prefix}:s:{pid}", "rooms")
    assert raw is not None
    return orjson.loads(raw)  # type: ignore[no-any-return]


def test_join_and_leave_edit_every_saved_session_of_the_user(
        pub: Publisher, r: redis.Redis, prefix: str) -> None:
    save_session(r, prefix, "p1", "42", ["user:42", "classroom:1"])
    save_session(r, prefix, "p2", "42", ["user:42"])
    save_session(r, prefix, "p3", "43", ["user:43", "classroom:1"])

    pub.join(42, ["classroom:2", "classroom:1"])
    assert session_rooms(r, prefix, "p1") == ["user:42", "classroom:1", "classroom:2"]
    assert session_rooms(r, prefix, "p2") == ["user:42", "classroom:2", "classroom:1"]

    pub.leave(42, ["classroom:1", "classroom:9"])
    assert session_rooms(r, prefix, "p1") == ["user:42", "classroom:2"]
    assert session_rooms(r, prefix, "p2") == ["user:42", "classroom:2"]

    assert session_rooms(r, prefix, "p3") == ["user:43", "classroom:1"]  # someone else's
    assert r.hget(f"{prefix}:s:p1", "sid") == b"sid-p1"  # other fields untouched
    assert 0 < r.pttl(f"{prefix}:s:p1") <= 120_000  # and its expiry kept


def test_the_users_own_room_is_always_kept(pub: Publisher, r: redis.Redis, prefix: str) -> None:
    save_session(r, prefix, "p1", "42", ["classroom:1"])  # however it lost it
    pub.leave(42, "classroom:1")
    assert session_rooms(r, prefix, "p1") == ["user:42"]


def test_expired_sessions_are_not_brought_back(pub: Publisher, r: redis.Redis,
                                               prefix: str) -> None:
    r.zadd(f"{prefix}:sessions:42", {"gone": 1})  # listed, but its hash expired
    pub.join(42, "classroom:1")
    assert not r.exists(f"{prefix}:s:gone")


def test_join_with_no_sessions_only_publishes(pub: Publisher, r: redis.Redis,
                                              prefix: str) -> None:
    pub.join(42, "classroom:1")
    assert r.keys(f"{prefix}:s:*") == []
    assert r.keys(f"{prefix}:sessions:*") == []


def test_disconnect_user_deletes_sessions_and_revokes(pub: Publisher, r: redis.Redis,
                                                      prefix: str) -> None:
    save_session(r, prefix, "p1", "42", ["user:42"])
    save_session(r, prefix, "p2", "42", ["user:42"])
    save_session(r, prefix, "p3", "43", ["user:43"])
    before = int(time.time() * 1000)
    pub.disconnect_user(42)
    after = int(time.time() * 1000)

    assert not r.exists(f"{prefix}:s:p1", f"{prefix}:s:p2", f"{prefix}:sessions:42")
    assert r.exists(f"{prefix}:s:p3", f"{prefix}:sessions:43") == 2
    revoked = r.get(f"{prefix}:revoked:42")
    assert revoked is not None
    assert before - 1000 <= int(revoked) <= after + 1000
    assert 239_000 < r.pttl(f"{prefix}:revoked:42") <= 240_000


def test_revocation_lives_twice_the_recovery_window(shared_redis: RedisServer, r: redis.Redis,
                                                    prefix: str) -> None:
    with Publisher(shared_redis.url, key_prefix=prefix, recovery_window_s=30) as pub:
        pub.disconnect_user("u1")
    assert 59_000 < r.pttl(f"{prefix}:revoked:u1") <= 60_000


def heartbeat(r: redis.Redis, prefix: str, replica: str, users: list[str],
              age_ms: int = 0) -> None:
    now = int(time.time() * 1000)
    r.zadd(f"{prefix}:replicas", {replica: now - age_ms})
    if users:
        r.sadd(f"{prefix}:online:{replica}", *users)
    r.pexpire(f"{prefix}:online:{replica}", 15_000)


def test_presence_counts_live_replicas_only(pub: Publisher, r: redis.Redis,
                                            prefix: str) -> None:
    assert pub.is_online(1) is False
    assert pub.online_count() == 0

    heartbeat(r, prefix, "a", ["1", "2"])
    assert pub.is_online(1) is True
    assert pub.is_online("2") is True
    assert pub.is_online(3) is False
    assert pub.online_count() == 2

    heartbeat(r, prefix, "b", ["2", "3"], age_ms=1_000)
    heartbeat(r, prefix, "stale", ["4", "1"], age_ms=20_000)  # crashed 20 s ago
    assert pub.is_online(3) is True
    assert pub.is_online(4) is False
    assert pub.online_count() == 3  # 1, 2, 3: distinct, the stale replica not counted


def test_presence_with_only_stale_replicas(pub: Publisher, r: redis.Redis, prefix: str) -> None:
    heartbeat(r, prefix, "old", ["1"], age_ms=15_001)
    assert pub.is_online(1) is False
    assert pub.online_count() == 0


def test_presence_with_an_empty_live_replica(pub: Publisher, r: redis.Redis,
                                             prefix: str) -> None:
    heartbeat(r, prefix, "idle", [])
    assert pub.online_count() == 0
    heartbeat(r, prefix, "busy", ["7"])
    assert pub.online_count() == 1
