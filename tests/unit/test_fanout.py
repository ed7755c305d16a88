"""`delivery.fanout`: bus messages in, socket writes out, on one replica with no process.

The e2e tests prove the same through sockets and Redis; these prove the logic (who gets an
event, how many times, in which order within a room) in milliseconds, on the in-process
`MemoryBackend` where its promises are enough and on `FakeBus` where a message must be crafted.
"""

from __future__ import annotations

from gateway.bus.memory_bus import MemoryBackend
from gateway.delivery.offsets import component
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import EVERYONE, Position, encode_event
from tests.unit.delivery_fakes import EVENT, FakeBus, FakeSocket, Replica, turns, with_position


async def memory_replica() -> Replica:
    return await Replica(MemoryBackend(history_max_len=100, window_s=60)).start()


async def test_an_event_to_a_room_reaches_each_local_socket_of_the_room_once() -> None:
    rep = await memory_replica()
    _, a = await rep.connect("1", classrooms=("7",))
    _, b = await rep.connect("2", classrooms=("7",))
    _, outsider = await rep.connect("3", classrooms=("8",))
    await rep.core.publish(EVENT, "hello", "classroom:7")
    await turns()
    assert a.data == ["hello"]
    assert b.data == ["hello"]
    assert outsider.data == []
    assert rep.counters.sent_by_event[EVENT] == 2


async def test_a_broadcast_reaches_every_socket() -> None:
    rep = await memory_replica()
    socks = [(await rep.connect(user))[1] for user in ("1", "2", "3")]
    await rep.core.publish(EVENT, "all", None)
    await turns()
    assert [s.data for s in socks] == [["all"], ["all"], ["all"]]


async def test_every_recipient_with_the_same_offset_tail_is_written_the_same_bytes_built_once() -> None:
    rep = await memory_replica()
    _, a = await rep.connect("1", classrooms=("7",))
    _, b = await rep.connect("2", classrooms=("7",))
    await rep.core.publish(EVENT, {"n": 1}, "classroom:7")
    await turns()
    assert a.frames[0] is b.frames[0]
    assert a.packets[0] is b.packets[0]


async def test_a_message_of_a_room_received_twice_is_written_once() -> None:
    """The same entry of a room's stream reaching the replica again (a resubscription overlap,
    a message redelivered): the socket's position in the room drops the second copy, and any
    older entry of the room arriving late."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, sock = await rep.connect("1", classrooms=("7",))
    bus.emit("classroom:7", "first")
    bus.emit("classroom:7", "once")
    await turns()
    again = bus.last_message
    rep.core.on_message(again)
    older = with_position(encode_event(EVENT, "late", "classroom:7", 0.0), Position(bus.ms, 0))
    rep.core.on_message(older)
    assert sock.data == ["first", "once"]


async def test_positions_are_per_room_so_the_same_id_in_two_rooms_is_two_events() -> None:
    """`1000-0` in user:1 and `1000-0` in classroom:7 are unrelated entries of two streams."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, sock = await rep.connect("1", classrooms=("7",))
    first = bus.emit("user:1", "mine")
    second = bus.emit("classroom:7", "the class's")
    third = bus.emit(None, "everyone's")
    assert first == second == third  # one clock, one ms, three streams
    await turns()
    assert sock.data == ["mine", "the class's", "everyone's"]


async def test_events_of_a_room_reach_a_socket_in_stream_order() -> None:
    rep = await memory_replica()
    _, sock = await rep.connect("1", classrooms=("7",))
    targets = ["user:1", "classroom:7", None, "classroom:7", "user:1", None, "classroom:7"]
    for i, room in enumerate(targets):
        await rep.core.publish(EVENT, [room, i], room)
    await turns()
    assert sorted(map(tuple, sock.data), key=lambda x: x[1]) == [(room, i) for i, room in enumerate(targets)]
    for room in ("user:1", "classroom:7", None):
        assert [i for r, i in sock.data if r == room] == [i for i, r in enumerate(targets) if r == room]


async def test_each_event_carries_the_sockets_offset_last_when_recovery_is_on() -> None:
    rep = await memory_replica()
    _, sock = await rep.connect("1")
    at = await rep.core.publish(EVENT, "x", "user:1")
    await turns()
    ms, _, seq = at.partition("-")
    assert sock.events == [[EVENT, "x", component("user:1", int(ms), int(seq)).decode()]]


async def test_no_offset_is_sent_when_recovery_is_off() -> None:
    rep = await Replica(MemoryBackend(history_max_len=100, window_s=0), window_s=0).start()
    _, sock = await rep.connect("1")
    await rep.core.publish(EVENT, "x", "user:1")
    await turns()
    assert sock.events == [[EVENT, "x"]]


async def test_a_message_that_is_not_an_envelope_is_counted_and_dropped() -> None:
    rep = await memory_replica()
    _, sock = await rep.connect("1")
    rep.core.on_message(b"\x93msgpack")
    rep.core.on_message(b'{"v":1,"k":"e","t":1,"ev":"x","d":1,"r":"user:1","o":"e1:1-1"}')  # version 1
    rep.core.on_message(b'{"v":2,"k":"e","t":1,"ev":"x","d":1,"r":"user:1"}')  # no position
    rep.core.on_message(b'{"v":2,"k":"e","t":1,"ev":"x","d":1,"r":"user:1","o":"e1:1-1"}')  # not an ID
    assert rep.counters.errors == ["bus_bad_envelope"] * 4
    assert rep.counters.received == {}
    await rep.core.publish(EVENT, "after", "user:1")
    await turns()
    assert sock.data == ["after"]
    assert rep.counters.received == {"event": 1}


async def test_each_message_moves_its_rooms_cursor_where_a_new_socket_starts() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    await rep.connect("1", classrooms=("7",))
    at = bus.emit("classroom:7", "x")
    everyone = bus.emit(None, "y")
    await turns()
    conn = Conn("s", "es", Identity("2", classrooms=("7",)), FakeSocket(), None)
    rep.core.register(conn, None)
    starts = await rep.core.attach_rooms(conn, ["user:2", "classroom:7"])
    assert starts is not None
    assert (starts["classroom:7"], starts[EVERYONE]) == (at, everyone)
