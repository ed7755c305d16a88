"""publisher/lua/publish.lua (and position.lua) on a real redis-server: positions per room,
history, sharded delivery (docs/wire-protocol.md, version 2)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from publisher import Message, Position, Publisher, parse_position
from publisher.envelope import Control, Event, decode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

EMPTY_SEQ = 2**64 - 1  # a position read from an empty stream: "empty at ms"


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


class Listener:
    """A sharded pub/sub subscriber (SSUBSCRIBE) to some channels, for asserting what arrives
    and what does not. Plain SUBSCRIBE would never see the bus's SPUBLISH."""

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.ssubscribe(*channels)
        for _ in channels:  # wait until Redis confirmed every subscription
            confirmation = self.pubsub.get_sharded_message(timeout=2)
            assert confirmation is not None
            assert confirmation["type"] == "ssubscribe"

    def next(self, timeout: float = 2.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_sharded_message(timeout=deadline - time.monotonic())
            if message is not None:
                assert message["type"] == "smessage", message
                return message["channel"].decode(), message["data"]
        raise AssertionError("nothing arrived")

    def nothing(self, timeout: float = 0.3) -> None:
        message = self.pubsub.get_sharded_message(timeout=timeout)
        assert message is None, message

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def listen(r: redis.Redis) -> Iterator[Any]:
    listeners: list[Listener] = []

    def make(*channels: str) -> Listener:
        listeners.append(Listener(r, *channels))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.close()


def ids(r: redis.Redis, key: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in r.xrange(key)]


def test_positions_increase_within_a_room_and_are_its_stream_ids(
        pub: Publisher, r: redis.Redis, prefix: str) -> None:
    a = [pub.emit("a", i, room="classroom:1").result() for i in range(3)]
    b = [pub.emit("b", i, user=42).result() for i in range(2)]
    everyone = pub.emit("c", 3, broadcast=True).result()
    a += pub.emit_many([Message("e", i, room="classroom:1") for i in range(5)])
    a.append(pub.coins_earned(3, amount=1, reason="r", new_balance=1, room="classroom:1").result())
    assert [parse_position(p) for p in a] == sorted(parse_position(p) for p in a)
    assert len(set(a)) == len(a)
    assert ids(r, f"{prefix}:{{classroom:1}}:h") == a
    assert ids(r, f"{prefix}:{{user:42}}:h") == b
    assert ids(r, f"{prefix}:{{*}}:h") == [everyone]
    assert abs(parse_position(a[-1]).ms - time.time() * 1000) < 5000
    assert r.keys(f"{prefix}:clock*") == []  # no clock: nothing every publish touches


def test_long_bursts_are_sent_in_chunks_in_order(pub: Publisher, r: redis.Redis,
                                                 prefix: str) -> None:
    positions = pub.emit_many([Message("x", i, room="classroom:1") for i in range(1201)])
    assert ids(r, f"{prefix}:{{classroom:1}}:h")[-1000:] == positions[-1000:]  # MAXLEN ~ 1000
    assert [orjson.loads(fields[b"m"])["d"] for _, fields in r.xrevrange(f"{prefix}:{{classroom:1}}:h", count=3)] == [
        1200, 1199, 1198]
    with pub.pipeline() as batch:
        for i in range(600):
            batch.emit("y", i, user=i % 3)
    assert len(batch.positions) == 600
    for user in range(3):
        assert ids(r, f"{prefix}:{{user:{user}}}:h") == batch.positions[user::3]


def test_history_entry_is_the_envelope_and_the_message_adds_its_position(
        pub: Publisher, r: redis.Redis, prefix: str, listen: Any) -> None:
    channel = f"{prefix}#/notifications#{{classroom:7}}#"
    listener = listen(channel)
    data = {"amount": 5, "reason": "ünïcode ✓ 🎉", "newBalance": 7}
    position = pub.emit("coins:earned", data, room="classroom:7").result()

    got_channel, message = listener.next()
    assert got_channel == channel
    assert orjson.loads(message)["o"] == position
    assert message.endswith(f',"o":"{position}"}}'.encode())
    event = decode(message)
    assert isinstance(event, Event)
    assert (event.name, event.data, event.room, event.position) == ("coins:earned", data, "classroom:7", position)
    assert Position(event.ms, event.seq) == parse_position(position)

    [(entry_id, fields)] = r.xrange(f"{prefix}:{{classroom:7}}:h")
    assert entry_id.decode() == position
    assert fields[b"m"] == message.replace(f',"o":"{position}"'.encode(), b"")  # stored without "o"
    ttl = r.pttl(f"{prefix}:{{classroom:7}}:h")
    assert 0 < ttl <= 240_000  # 2 x the recovery window


def test_broadcast_goes_to_the_everyone_channel_with_its_own_history(
        pub: Publisher, r: redis.Redis, prefix: str, listen: Any) -> None:
    everyone = f"{prefix}#/notifications#{{*}}#"
    room = f"{prefix}#/notifications#{{user:1}}#"
    listener = listen(everyone, room)
    position = pub.emit("maintenance", {"at": "22:00"}, broadcast=True).result()
    channel, message = listener.next()
    assert channel == everyone
    event = decode(message)
    assert isinstance(event, Event)
    assert (event.room, event.position) == (None, position)
    listener.nothing()
    assert r.keys(f"{prefix}:{{user:*") == []  # no room's history
    assert ids(r, f"{prefix}:{{*}}:h") == [position]


def test_an_event_reaches_its_room_and_no_other(pub: Publisher, prefix: str,
                                                listen: Any) -> None:
    mine = listen(f"{prefix}#/notifications#{{user:42}}#")
    other = listen(f"{prefix}#/notifications#{{user:43}}#", f"{prefix}#/notifications#{{*}}#")
    position = pub.emit("x", {"n": 1}, user=42).result()
    message = decode(mine.next()[1])
    assert isinstance(message, Event)
    assert message.position == position
    other.nothing()


def test_plain_subscribers_never_see_the_bus(pub: Publisher, r: redis.Redis, prefix: str) -> None:
    """Sharded channels are a namespace of their own: PUBLISH/SUBSCRIBE traffic (Node's
    emitter, python-socketio's managers) and the bus never meet."""
    plain = r.pubsub()
    plain.subscribe(f"{prefix}#/notifications#{{user:42}}#")
    assert plain.get_message(timeout=2) is not None  # the confirmation
    pub.emit("x", 1, user=42).result()
    assert plain.get_message(timeout=0.3) is None
    plain.close()


def test_control_messages_go_to_the_users_channel_with_no_history(
        pub: Publisher, r: redis.Redis, prefix: str, listen: Any) -> None:
    listener = listen(f"{prefix}#/notifications#{{user:42}}#")
    before = pub.emit("x", 1, room="classroom:1").result()
    join = pub.join(42, ["classroom:1", "classroom:2"])
    leave = pub.leave("42", "classroom:1")
    assert pub.disconnect_user(42) == 0  # no saved session
    messages = [decode(listener.next()[1]) for _ in range(3)]
    assert all(isinstance(m, Control) for m in messages)
    assert [(m.kind, m.user, m.rooms) for m in messages] == [  # type: ignore[union-attr]
        ("join", "42", tuple((room, parse_position(at)) for room, at in join.items())),
        ("leave", "42", (("classroom:1", parse_position(leave["classroom:1"])),)),
        ("kick", "42", ()),
    ]
    assert join["classroom:1"] == leave["classroom:1"] == before  # the newest entry of the room
    empty = parse_position(join["classroom:2"])  # no stream: "empty at ms", before anything new
    assert empty.seq == EMPTY_SEQ
    assert abs(empty.ms - time.time() * 1000) < 5000
    assert parse_position(pub.emit("x", 2, room="classroom:2").result()) > empty
    assert r.keys(f"{prefix}:{{user:42}}:h") == []  # control messages keep no history
    assert not r.exists(f"{prefix}:{{classroom:9}}:h")
    pub.join(42, "classroom:9")
    assert not r.exists(f"{prefix}:{{classroom:9}}:h")  # reading a position creates nothing


def test_payloads_up_to_the_limit_pass_through(pub: Publisher, prefix: str,
                                               listen: Any) -> None:
    listener = listen(f"{prefix}#/notifications#{{user:1}}#")
    big = "x" * (65536 - 2)
    pub.emit("big", big, user=1).result()
    event = decode(listener.next()[1])
    assert isinstance(event, Event)
    assert event.data == big


def test_history_is_trimmed_by_length(redis_server: RedisServer) -> None:
    client = redis_server.client()
    # Approximate trimming drops whole stream nodes: small nodes make it observable.
    client.config_set("stream-node-max-entries", 10)
    with Publisher(redis_server.url, history_max_len=20) as pub:
        positions = pub.emit_many([Message("x", i, room="classroom:1") for i in range(300)])
    length = client.xlen("ngw:{classroom:1}:h")
    assert 20 <= length < 60
    assert client.xrevrange("ngw:{classroom:1}:h", count=1)[0][0].decode() == positions[-1]
    client.close()


def test_history_expires_after_twice_the_window(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with Publisher(redis_server.url, recovery_window_s=0.3) as pub:
        pub.emit("x", 1, room="classroom:1").result()
        assert 0 < client.pttl("ngw:{classroom:1}:h") <= 600
        time.sleep(0.7)
        assert not client.exists("ngw:{classroom:1}:h")
    client.close()


def test_no_recovery_window_keeps_no_history_but_publishes(redis_server: RedisServer) -> None:
    client = redis_server.client()
    listener = Listener(client, "socket.io#/notifications#{classroom:1}#")
    with Publisher(redis_server.url, recovery_window_s=0) as pub:
        position = parse_position(pub.emit("x", 1, room="classroom:1").result())
        second = parse_position(pub.emit("x", 2, room="classroom:1").result())
    assert second > position, "positions still grow within the room (a replica drops what is not newer)"
    assert abs(position.ms - time.time() * 1000) < 5000
    event = decode(listener.next()[1])
    assert isinstance(event, Event)
    assert parse_position(event.position) == position
    assert client.xlen("ngw:{classroom:1}:h") == 0  # no history kept
    listener.close()
    client.close()


def test_the_script_refuses_an_envelope_that_is_not_an_object(r: redis.Redis) -> None:
    from publisher.scripts import PUBLISH

    with pytest.raises(redis.ResponseError, match="must be a JSON object ending with"):
        r.eval(PUBLISH.source, 1, "x:{r}:h", 10, 1000, "x#/notifications#{r}#", b'{"v":2')
    assert not r.exists("x:{r}:h")
    # one bad envelope among several: the whole call is refused, naming it, nothing written
    with pytest.raises(redis.ResponseError, match="envelope 2 must be"):
        r.eval(PUBLISH.source, 2, "x:{r}:h", "x:{s}:h", 10, 1000,
               "x#/notifications#{r}#", b'{"v":2}', "x#/notifications#{s}#", b'[1]')
    assert not r.exists("x:{r}:h")
    assert not r.exists("x:{s}:h")
    with pytest.raises(redis.ResponseError, match="arguments for 1 keys"):
        r.eval(PUBLISH.source, 1, "x:{r}:h", 10, 1000, "x#/notifications#{r}#")
    assert r.eval(PUBLISH.source, 0, 10, 1000) == []
