"""`delivery.fanout`: bus messages in, socket writes out, on one replica with no process.

The e2e tests prove the same through sockets and Redis; these prove the logic (who gets an
event, how many times, in which order) in milliseconds, on the in-process `MemoryBackend`
where its promises are enough and on `FakeBus` where a message must be crafted.
"""

from __future__ import annotations

from gateway.bus.memory_bus import MemoryBackend
from publisher.envelope import encode_event
from tests.unit.delivery_fakes import EVENT, FakeBus, Replica, turns


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


async def test_every_recipient_is_written_the_same_bytes_built_once() -> None:
    rep = await memory_replica()
    _, a = await rep.connect("1", classrooms=("7",))
    _, b = await rep.connect("2", classrooms=("7",))
    await rep.core.publish(EVENT, {"n": 1}, "classroom:7")
    await turns()
    assert a.frames[0] is b.frames[0]
    assert a.packets[0] is b.packets[0]


async def test_one_event_arriving_through_two_rooms_of_a_socket_is_written_once() -> None:
    """The same bus message (one position) on the channels of two rooms the socket is in, as a
    producer fanning one event out to several rooms would make it: the socket's position mark
    drops the second copy."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, sock = await rep.connect("1", classrooms=("7",))
    pos = bus.emit("classroom:7", "once")
    await turns()
    for room in ("user:1", "classroom:7"):  # the same offset again, on another of its rooms
        envelope = encode_event(EVENT, "once", room, 0.0)
        rep.core.on_message(envelope[:-1] + b',"o":"' + pos.offset.encode() + b'"}')
    assert sock.data == ["once"]


async def test_events_reach_a_socket_in_publish_order_across_its_rooms() -> None:
    rep = await memory_replica()
    _, sock = await rep.connect("1", classrooms=("7",))
    targets = ["user:1", "classroom:7", None, "classroom:7", "user:1", None]
    for i, room in enumerate(targets):
        await rep.core.publish(EVENT, i, room)
    await turns()
    assert sock.data == list(range(len(targets)))


async def test_each_event_carries_its_offset_last_when_recovery_is_on() -> None:
    rep = await memory_replica()
    _, sock = await rep.connect("1")
    offset = await rep.core.publish(EVENT, "x", "user:1")
    await turns()
    assert sock.events == [[EVENT, "x", offset]]


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
    rep.core.on_message(b'{"v":1,"k":"e","t":1,"ev":"x","d":1,"r":"user:1"}')  # no offset
    assert rep.counters.errors == ["bus_bad_envelope", "bus_bad_envelope"]
    await rep.core.publish(EVENT, "after", "user:1")
    await turns()
    assert sock.data == ["after"]
