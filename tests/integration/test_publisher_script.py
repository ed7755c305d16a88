"""publisher/lua/publish.lua on a real redis-server: positions, history, epochs, delivery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from publisher import Message, Publisher, parse_offset
from publisher.envelope import Control, Event, decode
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


class Listener:
    """A pub/sub subscriber to some channels, for asserting what arrives and what does not."""

    def __init__(self, client: redis.Redis, *channels: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(*channels)
        for _ in channels:  # wait until Redis confirmed every subscription
            confirmation = self.pubsub.get_message(timeout=2)
            assert confirmation is not None
            assert confirmation["type"] == "subscribe"

    def next(self, timeout: float = 2.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=deadline - time.monotonic())
            if message is not None:
                return message["channel"].decode(), message["data"]
        raise AssertionError("nothing arrived")

    def nothing(self, timeout: float = 0.3) -> None:
        message = self.pubsub.get_message(timeout=timeout)
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


def test_seqs_strictly_increase_across_rooms_and_kinds(pub: Publisher) -> None:
    offsets = [
        pub.emit("a", 1, room="classroom:1"),
        pub.emit("b", 2, user=42),
        pub.emit("c", 3, broadcast=True),
        pub.join(42, "classroom:9"),
        pub.emit("d", 4, room="classroom:2"),
        *pub.emit_many([Message("e", i, room=f"classroom:{i}") for i in range(20)]),
        pub.disconnect_user(7),
        pub.coins_earned(3, amount=1, reason="r", new_balance=1),
    ]
    parsed = [parse_offset(o) for o in offsets]
    seqs = [p.seq for p in parsed]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len({p.epoch for p in parsed}) == 1
    assert [p.ms for p in parsed] == sorted(p.ms for p in parsed)
    assert abs(parsed[-1].ms - time.time() * 1000) < 5000


def test_long_bursts_are_sent_in_chunks_in_order(pub: Publisher, r: redis.Redis,
                                                 prefix: str) -> None:
    offsets = pub.emit_many([Message("x", i, room="classroom:1") for i in range(1201)])
    seqs = [parse_offset(o).seq for o in offsets]
    assert seqs == list(range(1, 1202))
    with pub.pipeline() as batch:
        for i in range(600):
            batch.emit("y", i, user=i)
    assert [parse_offset(o).seq for o in batch.offsets] == list(range(1202, 1802))
    assert r.hget(f"{prefix}:clock", "seq") == b"1801"


def test_clock_holds_epoch_seq_and_ms(pub: Publisher, r: redis.Redis, prefix: str) -> None:
    offset = parse_offset(pub.emit("x", {}, user=1))
    clock = r.hgetall(f"{prefix}:clock")
    assert clock == {b"epoch": offset.epoch.encode(), b"seq": str(offset.seq).encode(),
                     b"ms": str(offset.ms).encode()}
    assert len(offset.epoch) == 16


def test_history_entry_is_the_published_message(pub: Publisher, r: redis.Redis,
                                                prefix: str, listen: Any) -> None:
    channel = f"{prefix}#/notifications#classroom:7#"
    listener = listen(channel)
    data = {"amount": 5, "reason": "ünïcode ✓ 🎉", "newBalance": 7}
    offset = pub.emit("coins:earned", data, room="classroom:7")

    got_channel, message = listener.next()
    assert got_channel == channel
    assert orjson.loads(message)["o"] == offset
    assert message.endswith(f',"o":"{offset}"}}'.encode())
    event = decode(message)
    assert isinstance(event, Event)
    assert (event.ev, event.d, event.r, event.o) == ("coins:earned", data, "classroom:7", offset)
    assert (event.epoch, event.ms, event.seq) == (
        parse_offset(offset).epoch, parse_offset(offset).ms, parse_offset(offset).seq)

    [(entry_id, fields)] = r.xrange(f"{prefix}:h:classroom:7")
    assert entry_id.decode() == parse_offset(offset).stream_id
    assert fields[b"m"] == message
    ttl = r.pttl(f"{prefix}:h:classroom:7")
    assert 0 < ttl <= 240_000


def test_broadcast_goes_to_the_broadcast_channel_only_with_its_own_history(
        pub: Publisher, r: redis.Redis, prefix: str, listen: Any) -> None:
    everyone = f"{prefix}#/notifications#"
    room = f"{prefix}#/notifications#user:1#"
    listener = listen(everyone, room)
    offset = pub.emit("maintenance", {"at": "22:00"}, broadcast=True)
    channel, message = listener.next()
    assert channel == everyone
    event = decode(message)
    assert isinstance(event, Event)
    assert (event.r, event.o) == (None, offset)
    listener.nothing()
    assert r.keys(f"{prefix}:h:*") == []  # no room's history
    assert [entry[1][b"m"] for entry in r.xrange(f"{prefix}:hb")] == [message]


def test_an_event_reaches_its_room_and_no_other(pub: Publisher, prefix: str,
                                                listen: Any) -> None:
    mine = listen(f"{prefix}#/notifications#user:42#")
    other = listen(f"{prefix}#/notifications#user:43#", f"{prefix}#/notifications#")
    pub.emit("x", {"n": 1}, user=42)
    assert decode(mine.next()[1]).o  # arrived
    other.nothing()


def test_control_messages_go_to_the_user_channel_with_no_history(
        pub: Publisher, r: redis.Redis, prefix: str, listen: Any) -> None:
    listener = listen(f"{prefix}#/notifications#user:42#")
    join = pub.join(42, ["classroom:1", "classroom:2"])
    leave = pub.leave("42", "classroom:1")
    kick = pub.disconnect_user(42)
    messages = [decode(listener.next()[1]) for _ in range(3)]
    assert all(isinstance(m, Control) for m in messages)
    assert [(m.k, m.u, m.rooms, m.o) for m in messages] == [  # type: ignore[union-attr]
        ("join", "42", ("classroom:1", "classroom:2"), join),
        ("leave", "42", ("classroom:1",), leave),
        ("kick", "42", (), kick),
    ]
    assert r.keys(f"{prefix}:h:*") == []


def test_payloads_up_to_the_limit_pass_through(pub: Publisher, prefix: str,
                                               listen: Any) -> None:
    listener = listen(f"{prefix}#/notifications#user:1#")
    big = "x" * (65536 - 2)
    pub.emit("big", big, user=1)
    event = decode(listener.next()[1])
    assert isinstance(event, Event)
    assert event.d == big


def test_history_is_trimmed_by_length(redis_server: RedisServer) -> None:
    client = redis_server.client()
    # Approximate trimming drops whole stream nodes: small nodes make it observable.
    client.config_set("stream-node-max-entries", 10)
    with Publisher(redis_server.url, history_max_len=20) as pub:
        offsets = pub.emit_many([Message("x", i, room="classroom:1") for i in range(300)])
    length = client.xlen("ngw:h:classroom:1")
    assert 20 <= length < 60
    last = client.xrevrange("ngw:h:classroom:1", count=1)[0][0].decode()
    assert last == parse_offset(offsets[-1]).stream_id
    client.close()


def test_history_is_trimmed_by_age_and_expires(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.config_set("stream-node-max-entries", 1)
    with Publisher(redis_server.url, recovery_window_s=0.3) as pub:
        old = pub.emit("x", 1, room="classroom:1")
        time.sleep(0.5)
        new = pub.emit("x", 2, room="classroom:1")
    ids = [entry[0].decode() for entry in client.xrange("ngw:h:classroom:1")]
    assert parse_offset(old).stream_id not in ids
    assert ids[-1] == parse_offset(new).stream_id
    assert 0 < client.pttl("ngw:h:classroom:1") <= 600
    client.close()


def test_epoch_is_made_once_and_changes_when_redis_loses_its_data(
        redis_server: RedisServer) -> None:
    with Publisher(redis_server.url) as pub:
        first = [parse_offset(pub.emit("x", i, user=1)) for i in range(3)]
        assert len({o.epoch for o in first}) == 1
        redis_server.restart()
        after = [parse_offset(pub.emit("x", i, user=1)) for i in range(2)]
    assert len({o.epoch for o in after}) == 1
    assert after[0].epoch != first[0].epoch
    assert [o.seq for o in after] == [1, 2]


def test_a_stream_ahead_of_the_clock_is_restarted(redis_server: RedisServer) -> None:
    """If the clock alone was lost (say, evicted), a room's old stream has higher IDs than the
    new clock gives: it belongs to a dead epoch, so the script replaces it."""
    client = redis_server.client()
    client.xadd("ngw:h:classroom:1", {"m": "old"}, id=f"{int(time.time() * 1000) + 10**9}-1")
    with Publisher(redis_server.url) as pub:
        offset = pub.emit("x", 1, room="classroom:1")
    entries = client.xrange("ngw:h:classroom:1")
    assert [e[0].decode() for e in entries] == [parse_offset(offset).stream_id]
    client.close()


def test_the_script_refuses_an_envelope_that_is_not_an_object(r: redis.Redis) -> None:
    from publisher.scripts import PUBLISH

    with pytest.raises(redis.ResponseError, match="must be a JSON object ending with"):
        r.eval(PUBLISH.source, 2, "x:clock", "", "chan", b'{"v":1', "e", 10, 1000)
    assert not r.exists("x:clock")
