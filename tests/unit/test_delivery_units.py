"""Frames, the per-socket dedup/merge and holds, the registry, token buckets, the memory bus's
streams and sessions: the pieces delivery is built from."""

import time
from typing import Any

import orjson
import pytest

from gateway.bus import memory_bus
from gateway.bus.memory_bus import SWEEP_AFTER_ENDED, MemoryBackend
from gateway.delivery.frames import eio_message_frame, event_head, event_packet, ws_text_frame
from gateway.delivery.offsets import EMPTY_SEQ
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.policy.ratelimit import KeyedBuckets, TokenBucket
from gateway.policy.rooms import Identity
from publisher.envelope import Position, parse_position
from publisher.session import SessionRecord
from tests.unit.delivery_fakes import FakeCounters, Replica, turns


def test_event_packet_carries_the_offset_last() -> None:
    text = event_packet("coins:earned", {"amount": 1}, "e:1-2")
    assert text.startswith(b"2/notifications,")
    assert orjson.loads(text[len(b"2/notifications,"):]) == ["coins:earned", {"amount": 1}, "e:1-2"]
    assert orjson.loads(event_packet("x", None, None)[16:]) == ["x", None]


def test_event_head_ends_where_each_recipients_offset_is_spliced_in() -> None:
    head = event_head("coins:earned", {"amount": 1}, with_offset=True)
    assert head + b"AAAAAA:1.0" + b'"]' == event_packet("coins:earned", {"amount": 1}, "AAAAAA:1.0")
    assert event_head("x", [1], with_offset=False) == event_packet("x", [1], None)


def test_ws_frame_lengths() -> None:
    for n in (0, 125, 126, 65535, 65536, 70000):
        frame = ws_text_frame(b"a" * n)
        assert frame[0] == 0x81
        if n < 126:
            assert frame[1] == n
            assert len(frame) == n + 2
        elif n < 65536:
            assert frame[1] == 126
            assert int.from_bytes(frame[2:4], "big") == n
        else:
            assert frame[1] == 127
            assert int.from_bytes(frame[2:10], "big") == n
    assert eio_message_frame(b"2/x,[]")[2:] == b"42/x,[]"


class FakeEio:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def push_message(self, text: bytes, frame: bytes) -> None:
        self.sent.append(text)


def out(key: int, room: str = "r", *, replay: bool = False) -> Outgoing:
    """An event of `room` at `key`, whose whole packet is its room and key (no offset)."""
    return Outgoing(room, key, "e", f"{room}{key}".encode(), b"", 0.0, replay)


def conn(sid: str = "s") -> tuple[Conn, FakeEio]:
    eio = FakeEio()
    c = Conn(sid, "e" + sid, Identity("1"), eio, None)  # type: ignore[arg-type]
    c.release([])  # its CONNECT reply is written
    return c, eio


def test_a_socket_writes_each_entry_of_a_room_once_in_order() -> None:
    c, eio = conn()
    assert c.deliver(out(5))
    assert not c.deliver(out(5))  # again
    assert not c.deliver(out(3))  # older than what it has
    assert c.deliver(out(3, "other"))  # another room's positions are its own
    assert c.deliver(out(7))
    assert eio.sent == [b"r5", b"other3", b"r7"]


def test_held_events_merge_with_history_in_order_within_each_room_once() -> None:
    c, eio = conn()
    c.hold()
    c.deliver(out(5))
    c.deliver(out(7))
    c.deliver(out(2, "other"))
    assert eio.sent == []
    counters = FakeCounters()
    assert c.release([out(3, replay=True), out(5, replay=True), out(6, replay=True), out(1, "other", replay=True)],
                     counters) == 6
    assert [p for p in eio.sent if p.startswith(b"r")] == [b"r3", b"r5", b"r6", b"r7"]
    assert [p for p in eio.sent if p.startswith(b"o")] == [b"other1", b"other2"]
    assert (counters.sent_by_event["e"], counters.replayed) == (6, 3)  # 5 once: its live copy
    c.deliver(out(7))
    c.deliver(out(2))
    c.deliver(out(8))
    assert eio.sent[-1] == b"r8"
    assert len(eio.sent) == 7


def test_holds_count_and_only_the_last_release_writes() -> None:
    c, eio = conn()
    c.hold()  # a catch-up
    c.hold()  # a join
    c.deliver(out(1))
    assert c.release([out(2)]) == 0  # the join ends its own hold only
    assert eio.sent == []
    assert c.release([]) == 2
    assert eio.sent == [b"r1", b"r2"]
    assert c.pending is None
    assert c.release([out(3)]) == 1  # a release with no hold delivers at once
    assert c.deliver(out(4))
    assert eio.sent == [b"r1", b"r2", b"r3", b"r4"]


def test_a_new_socket_is_held_until_its_connect_reply() -> None:
    eio = FakeEio()
    c = Conn("s", "es", Identity("1"), eio, None)  # type: ignore[arg-type]
    assert not c.deliver(out(1))
    assert eio.sent == []
    c.release([])
    assert eio.sent == [b"r1"]


def test_registry_rooms_and_expiry() -> None:
    reg = Registry()
    a, _ = conn("a")
    b, _ = conn("b")
    reg.add(a, 10.0)
    reg.add(b, None)
    assert reg.join(a, "r") is True
    assert reg.join(b, "r") is False
    assert reg.leave(a, "r") is False
    assert reg.expired(5.0) == []
    assert reg.expired(11.0) == [a]
    removed = reg.remove("b")
    assert removed is not None
    assert removed.conn is b
    assert removed.emptied == ["r"]
    # a recovered socket reuses its sid: it must not inherit the old expiry
    reg.remove("a")
    a2, _ = conn("a")
    reg.add(a2, 100.0)
    reg.add(a, 1.0)
    reg.remove("a")
    reg.add(a2, 100.0)
    assert reg.expired(50.0) == []


def test_presence_is_decided_by_the_user_room() -> None:
    reg = Registry()
    a, _ = conn("a")
    b, _ = conn("b")
    assert reg.add(a, None) is True  # the user's first socket here: online
    reg.join(a, "user:1")
    assert reg.add(b, None) is False
    reg.join(b, "user:1")
    first = reg.remove("a")
    assert first is not None
    assert first.user_offline is False
    last = reg.remove("b")
    assert last is not None
    assert last.user_offline is True
    assert last.emptied == ["user:1"]


def test_expiry_entries_do_not_keep_closed_sockets_alive() -> None:
    """Issue 12, item 3: the expiry heap held each `Conn` (and its socket) until the token's
    exp, long after the socket had gone; churn x token lifetime grew without bound."""
    reg = Registry()
    gone, _ = conn("gone")
    reg.add(gone, time.time() + 3600)
    reg.remove("gone")
    assert all(not isinstance(item, Conn) for entry in reg._expiries for item in entry)
    for i in range(5000):  # churn: the heap is compacted, not grown for the tokens' lifetime
        c, _ = conn(f"s{i}")
        reg.add(c, time.time() + 3600)
        reg.remove(c.sid)
    assert len(reg._expiries) <= 1024 + 2


class Holder:
    tokens = 0.0
    stamp = 0.0


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    h: Any = Holder()
    assert [bucket.take(h, now=100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(h, now=101.0) is True
    assert bucket.take(h, now=101.0) is False


def test_keyed_buckets_stay_bounded() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1, max_keys=10)
    for i in range(100):
        assert buckets.take(f"10.0.0.{i}", now=float(i))
    assert len(buckets._state) <= 10


async def test_the_memory_bus_forgets_sessions_past_their_window() -> None:
    bus = MemoryBackend(history_max_len=10, window_s=0.001)
    record = SessionRecord("s", "1", ("user:1",), {"user:1": "1-1"}, 0, 0)
    for i in range(SWEEP_AFTER_ENDED):
        bus.save_session(f"p{i}", record)
        bus.end_session(f"p{i}", "1", 0)
    bus.save_session("live", record)  # connected: kept
    bus._sweep(time.monotonic() + 1)  # a second later: every ended session is past its window
    assert list(bus._sessions) == ["live"]
    assert await bus.load_session("1", "live") is not None
    assert await bus.load_session("2", "live") is None  # looked up under the token's user


# -- the memory bus's streams: Redis's position rules (gateway/bus/lua/history.lua) ---------------


async def streams(monkeypatch: pytest.MonkeyPatch, max_len: int = 3) -> tuple[MemoryBackend, list[int]]:
    """A memory bus whose clock the test moves (`clock[0]`, ms)."""
    clock = [1_000_000]
    monkeypatch.setattr(memory_bus, "_now_ms", lambda: clock[0])
    return MemoryBackend(history_max_len=max_len, window_s=60), clock


def published(entries: list[tuple[Position, bytes]] | None) -> list[Any] | None:
    return None if entries is None else [orjson.loads(raw)["d"] for _, raw in entries]


async def test_memory_bus_positions_are_ids_of_each_rooms_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, clock = await streams(monkeypatch)
    assert [await bus.publish_event("e", i, "r") for i in range(3)] == ["1000000-0", "1000000-1", "1000000-2"]
    assert await bus.publish_event("e", 0, "other") == "1000000-0"  # per room
    clock[0] += 5
    assert await bus.publish_event("e", 3, "r") == "1000005-0"
    clock[0] -= 10  # the clock went back: a stream's IDs never do
    assert await bus.publish_event("e", 4, "r") == "1000005-1"
    assert await bus.publish_event("e", 5, None) == "999995-0"  # everyone's stream
    assert await bus.positions(["r", "nothing"]) == {"r": Position(1_000_005, 1),
                                                     "nothing": Position(999_994, EMPTY_SEQ)}


async def test_memory_bus_replays_after_an_entry_it_still_has_up_to_an_end(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, _ = await streams(monkeypatch)
    ids = [parse_position(await bus.publish_event("e", i, "r")) for i in range(3)]
    found = await bus.history([("r", ids[0], None)])
    assert published(found["r"]) == [1, 2]
    assert published((await bus.history([("r", ids[0], ids[1])]))["r"]) == [1]
    assert published((await bus.history([("r", ids[2], None)]))["r"]) == []
    await bus.publish_event("e", 3, "r")  # max_len 3: entry 0 is trimmed
    assert (await bus.history([("r", ids[0], None)]))["r"] is None
    assert (await bus.history([("r", Position(ids[1].ms, 99), None)]))["r"] is None  # never an entry


async def test_memory_bus_replays_from_an_empty_start_only_while_nothing_was_trimmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus, _ = await streams(monkeypatch)
    empty = (await bus.positions(["r"]))["r"]
    assert empty.seq == EMPTY_SEQ
    for i in range(3):
        await bus.publish_event("e", i, "r")
    assert published((await bus.history([("r", empty, None)]))["r"]) == [0, 1, 2]
    await bus.publish_event("e", 3, "r")
    assert (await bus.history([("r", empty, None)]))["r"] is None


async def test_memory_bus_accepts_a_missing_stream_only_for_positions_older_than_its_lifetime(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus, clock = await streams(monkeypatch)
    at = parse_position(await bus.publish_event("e", 0, "r"))
    clock[0] += 120_001  # 2 x the window with no write: the stream expired
    assert (await bus.history([("r", at, None)]))["r"] == []
    recent = Position(clock[0] - 1_000, 0)  # an entry of a stream that is gone: lost, not expired
    assert (await bus.history([("gone", recent, None)]))["gone"] is None
    assert (await bus.history([("gone", Position(clock[0] - 1_000, EMPTY_SEQ), None)]))["gone"] == []


async def test_memory_bus_answers_each_span_of_a_history_read(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, _ = await streams(monkeypatch)
    a = parse_position(await bus.publish_event("e", "a0", "a"))
    await bus.publish_event("e", "a1", "a")
    b = parse_position(await bus.publish_event("e", "b0", "b"))
    found = await bus.history([("a", a, None), ("b", Position(b.ms, 5), None)])
    assert published(found["a"]) == ["a1"]
    assert found["b"] is None


async def test_memory_bus_without_recovery_still_gives_each_event_its_own_position(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_bus, "_now_ms", lambda: 1_000_000)
    rep = await Replica(MemoryBackend(history_max_len=100, window_s=0), window_s=0).start()
    _, sock = await rep.connect("1")
    for i in range(3):
        await rep.core.publish("e", i, "user:1")
    await turns()
    assert sock.data == [0, 1, 2]
