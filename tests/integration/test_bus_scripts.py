"""The gateway's Lua scripts against a real redis-server: every operation of writes.lua,
history.lua's spans and hole detection, heartbeat.lua's light and full beats."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from publisher import Publisher
from publisher.scripts import Script
from tests.support.redis_server import RedisServer


def script(name: str) -> str:
    """The script as Redis runs it: session field names filled in (publisher.session)."""
    return Script.load(name, "gateway.bus").source.decode()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


def test_writes_every_operation(r: redis.Redis) -> None:
    writes = r.register_script(script("writes.lua"))
    now = str(int(time.time() * 1000))
    writes(args=["p", "rep1", 60_000, 30_000, 15_000, 100,
                 "S", "pid1", "42", "sid1", '["user:42"]', "e:1-1", now, now, "{}",
                 "S", "pid2", "42", "sid2", '["user:42"]', "e:1-1", now, now, "{}",
                 "O", "42",
                 "R", "pid1", '["user:42","classroom:7"]', "classroom:7", "j", "5-5",
                 "R", "pid1", '["user:42"]', "classroom:7", "l", "9-9",
                 "E", "pid1", "42", "123",
                 "E", "ghost", "42", "123",
                 "D", "pid2", "42",
                 "F", "43"])
    session = {k.decode(): v.decode() for k, v in r.hgetall("p:s:pid1").items()}
    assert session["user"] == "42"
    assert session["rooms"] == '["user:42"]'
    assert orjson.loads(session["j"]) == {}
    assert orjson.loads(session["l"]) == {"classroom:7": "9-9"}
    assert session["t"] == "123"
    assert 0 < r.pttl("p:s:pid1") <= 30_000  # the client left: kept for the window
    # the index holds live sessions only, each scored with when it expires
    assert r.zrange("p:sessions:42", 0, -1) == [b"pid1"]
    assert r.zscore("p:sessions:42", "pid1") <= int(now) + 30_000 + 1000
    assert not r.exists("p:s:pid2")  # D: the client left for good, nothing kept
    assert r.smembers("p:online:rep1") == {b"42"}
    assert not r.exists("p:s:ghost")  # E never creates a session (a kick deleted it)
    with pytest.raises(redis.ResponseError, match="unknown operation"):
        writes(args=["p", "rep1", 60_000, 30_000, 15_000, 100, "Z", "x"])


def test_a_users_sessions_are_capped_and_expired_ones_trimmed(r: redis.Redis) -> None:
    """Issue 12, item 1: one socket looping CONNECT/DISCONNECT made a session and an index
    member each time, and the index was never trimmed."""
    writes = r.register_script(script("writes.lua"))
    now = str(int(time.time() * 1000))
    ops: list[str] = []
    for i in range(30):
        ops += ["S", f"p{i}", "7", f"s{i}", '["user:7"]', "e:1-1", now, now, "{}"]
    writes(args=["p", "rep1", 60_000, 30_000, 15_000, 10, *ops])
    assert r.zcard("p:sessions:7") == 10
    assert len(r.keys("p:s:*")) == 10  # the oldest were evicted with their records
    r.zadd("p:sessions:7", {"stale": 1})  # expired long ago
    writes(args=["p", "rep1", 60_000, 30_000, 15_000, 10,
                 "S", "fresh", "7", "s", '["user:7"]', "e:1-1", now, now, "{}"])
    assert r.zscore("p:sessions:7", "stale") is None


def test_history_spans_and_holes(redis_server: RedisServer, r: redis.Redis) -> None:
    pub = Publisher(redis_server.url, key_prefix="q", history_max_len=10)
    try:
        offsets = [pub.emit("coins:earned", {"amount": i, "reason": "r", "newBalance": i}, room="classroom:1")
                   for i in range(5)]
        history = r.register_script(script("history.lua"))
        ids = [o.split(":", 1)[1] for o in offsets]
        reply = history(keys=["q:h:classroom:1"], args=[ids[1], ids[3]])
        assert reply[0] == 1
        assert [orjson.loads(m)["d"]["amount"] for m in reply[1:]] == [2, 3]
        # trimmed past the offset: a hole is reported, not a short replay
        for i in range(300):
            pub.emit("coins:earned", {"amount": i, "reason": "r", "newBalance": i}, room="classroom:1")
        assert history(keys=["q:h:classroom:1"], args=[ids[0], "+"]) == [0]
        # nothing after the newest entry: complete and empty
        newest = r.xrevrange("q:h:classroom:1", count=1)[0][0].decode()
        assert history(keys=["q:h:classroom:1"], args=[newest, "+"]) == [1]
    finally:
        pub.close()


def test_heartbeat_light_and_full(r: redis.Redis) -> None:
    beat = r.register_script(script("heartbeat.lua"))
    r.hset("p:s:pid1", mapping={"user": "1", "t": "0"})
    r.zadd("p:sessions:1", {"pid1": 1})
    now = int(time.time() * 1000)
    beat(keys=["p:replicas", "p:online:rep1"],
         args=["rep1", now, 15_000, 60_000, "p", "full", "1\n2", "pid1 1\nghost 2"])
    assert r.smembers("p:online:rep1") == {b"1", b"2"}
    assert r.hget("p:s:pid1", "t") == str(now).encode()
    assert r.zscore("p:sessions:1", "pid1") == now + 60_000  # the index follows the session's life
    assert not r.exists("p:sessions:2")
    assert not r.exists("p:s:ghost")
    assert r.zscore("p:replicas", "rep1") == now
    beat(keys=["p:replicas", "p:online:rep1"], args=["rep1", now + 5000, 15_000, 60_000, "p", "light", "", ""])
    assert r.smembers("p:online:rep1") == {b"1", b"2"}  # a light beat keeps the set
    assert r.zscore("p:replicas", "rep1") == now + 5000
