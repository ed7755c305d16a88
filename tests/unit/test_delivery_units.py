"""Frames, the per-socket dedup/merge, token buckets: the pieces delivery is built from."""

import time
from typing import Any

import orjson

from gateway.delivery.frames import eio_message_frame, event_packet, ws_text_frame
from gateway.delivery.registry import Conn, Outgoing, Registry
from gateway.policy.ratelimit import KeyedBuckets, TokenBucket
from gateway.policy.rooms import Identity
from publisher.session import SessionRecord


def test_event_packet_carries_the_offset_last() -> None:
    text = event_packet("coins:earned", {"amount": 1}, "e:1-2")
    assert text.startswith(b"2/notifications,")
    assert orjson.loads(text[len(b"2/notifications,"):]) == ["coins:earned", {"amount": 1}, "e:1-2"]
    assert orjson.loads(event_packet("x", None, None)[16:]) == ["x", None]


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


def out(seq: int) -> Outgoing:
    return Outgoing(seq, "e", str(seq).encode(), b"", 0.0)


def conn(sid: str = "s") -> tuple[Conn, FakeEio]:
    eio = FakeEio()
    c = Conn(sid, "e" + sid, Identity("1"), eio, None, 0)  # type: ignore[arg-type]
    return c, eio


def test_pending_events_merge_with_history_in_order_once() -> None:
    c, eio = conn()
    c.deliver(out(5))
    c.deliver(out(7))
    c.attach([out(3), out(5), out(6)])
    assert eio.sent == [b"3", b"5", b"6", b"7"]
    c.deliver(out(7))
    c.deliver(out(2))
    c.deliver(out(8))
    assert eio.sent == [b"3", b"5", b"6", b"7", b"8"]


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
    from gateway.bus.memory_bus import SWEEP_AFTER_ENDED, MemoryBackend

    bus = MemoryBackend(history_max_len=10, window_s=0.001)
    record = SessionRecord("s", "1", ("user:1",), "e:1-1", 0, 0)
    for i in range(SWEEP_AFTER_ENDED):
        bus.save_session(f"p{i}", record)
        bus.end_session(f"p{i}", "1", 0)
    bus.save_session("live", record)  # connected: kept
    bus._sweep(time.monotonic() + 1)  # a second later: every ended session is past its window
    assert list(bus._sessions) == ["live"]
    assert await bus.load_session("live") is not None
