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
    writes(args=["p", "rep1", 60_000, 30_000, 15_000,
                 "S", "pid1", "42", "sid1", '["user:42"]', "e:1-1", now, now, "{}",
                 "O", "42",
                 "R", "pid1", '["user:42","classroom:7"]', "classroom:7", "j", "5-5",
                 "R", "pid1", '["user:42"]', "classroom:7", "l", "9-9",
                 "E", "pid1", "123",
                 "E", "ghost", "123",
                 "F", "43"])
    session = {k.decode(): v.decode() for k, v in r.hgetall("p:s:pid1").items()}
    assert session["user"] == "42"
    assert session["rooms"] == '["user:42"]'
    assert orjson.loads(session["j"]) == {}
    assert orjson.loads(session["l"]) == {"classroom:7": "9-9"}
    assert session["t"] == "123"
    assert 0 < r.pttl("p:s:pid1") <= 30_000  # the client left: kept for the window
    assert r.smembers("p:u:42") == {b"pid1"}
    assert r.smembers("p:online:rep1") == {b"42"}
    assert not r.exists("p:s:ghost")  # E never creates a session (a kick deleted it)
    with pytest.raises(redis.ResponseError, match="unknown operation"):
        writes(args=["p", "rep1", 60_000, 30_000, 15_000, "Z", "x"])


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
    now = int(time.time() * 1000)
    beat(keys=["p:replicas", "p:online:rep1"], args=["rep1", now, 15_000, 60_000, "p", "full", "1\n2", "pid1\nghost"])
    assert r.smembers("p:online:rep1") == {b"1", b"2"}
    assert r.hget("p:s:pid1", "t") == str(now).encode()
    assert not r.exists("p:s:ghost")
    assert r.zscore("p:replicas", "rep1") == now
    beat(keys=["p:replicas", "p:online:rep1"], args=["rep1", now + 5000, 15_000, 60_000, "p", "light", "", ""])
    assert r.smembers("p:online:rep1") == {b"1", b"2"}  # a light beat keeps the set
    assert r.zscore("p:replicas", "rep1") == now + 5000
