"""`delivery.attach`: a socket entering rooms loses no event and repeats none.

While a socket's channels are being subscribed and a room's history read, the events that
reach it live wait in `Conn.pending`; at the end they are merged with the history, in order
within each room, each once. Holds count: whoever holds a socket (its CONNECT, a join, a
catch-up) ends only its own hold. `FakeBus` holds `subscribe` and `history` open so the test can
publish inside that window, and delivers a message only on channels already subscribed, as
Redis does.
"""

from __future__ import annotations

import asyncio

from gateway.delivery.connect import Accepted
from gateway.delivery.offsets import EMPTY_SEQ, key_of
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import EVERYONE, KIND_JOIN, KIND_LEAVE
from tests.unit.delivery_fakes import FakeBus, FakeSocket, Replica, turns


async def started() -> tuple[FakeBus, Replica]:
    bus = FakeBus()
    return bus, await Replica(bus).start()


def of(sock: FakeSocket, prefix: str) -> list[str]:
    """The payloads of one room, in the order written (payloads name their room)."""
    return [d for d in sock.data if d.startswith(prefix)]


async def test_a_new_socket_is_held_until_its_connect_reply_then_gets_what_arrived() -> None:
    bus, rep = await started()
    bus.subscribe_gate = asyncio.Event()
    sock = FakeSocket()
    conn = Conn("s1", "e1", Identity("1"), sock, None)
    rep.core.register(conn, None)
    attaching = asyncio.create_task(rep.core.attach_rooms(conn, ["user:1"]))
    await turns()
    before = bus.emit("user:1", "before its subscription")  # not the socket's: it starts later
    bus.subscribe_gate.set()
    starts = await attaching
    assert starts is not None
    assert set(starts) == {"user:1", EVERYONE}
    assert starts["user:1"] >= before  # its session starts after everything it did not get
    bus.emit("user:1", "while connecting")
    await turns()
    assert sock.data == []  # the CONNECT reply is not written yet
    rep.core.accepted(conn)
    assert sock.data == ["while connecting"]


async def test_a_socket_entering_an_empty_room_starts_empty_at_now() -> None:
    bus, rep = await started()
    conn = Conn("s1", "e1", Identity("1"), FakeSocket(), None)
    rep.core.register(conn, None)
    starts = await rep.core.attach_rooms(conn, ["user:1"])
    assert starts is not None
    assert starts["user:1"].seq == EMPTY_SEQ
    first = bus.emit("user:1", "first")
    assert key_of(first.ms, first.seq) > key_of(starts["user:1"].ms, starts["user:1"].seq)


async def test_a_join_holds_live_events_until_history_is_read_then_merges_them_in_order() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("quiz:9", "q0 before the join")
    bus.history_gate = asyncio.Event()
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    bus.emit("quiz:9", "q1")  # published before the replica follows quiz:9: history only
    await turns()  # the join is received; its history read is held open
    bus.emit("user:1", "u1")  # live, while the history is being read: held
    bus.emit("quiz:9", "q2")
    await turns()
    assert sock.data == []
    bus.history_gate.set()
    await turns()
    assert of(sock, "q") == ["q1", "q2"]
    assert of(sock, "u") == ["u1"]
    bus.emit("quiz:9", "q3")
    await turns()
    assert sock.data[-1] == "q3"


async def test_an_event_both_in_history_and_live_during_a_join_is_written_once() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.history_gate = asyncio.Event()
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    await turns()  # subscribed to quiz:9, reading its history
    bus.emit("quiz:9", "both")  # live now, and in the history the read will return
    await turns()
    bus.history_gate.set()
    await turns()
    assert sock.data == ["both"]
    assert rep.counters.received["event"] == 1  # it did arrive live
    assert rep.counters.sent_by_event.total() == 1


async def test_events_are_held_while_the_subscription_of_a_joined_room_is_pending() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.subscribe_gate = asyncio.Event()
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    await turns()  # SUBSCRIBE quiz:9 sent, not confirmed
    bus.emit("user:1", "u1")
    bus.emit("quiz:9", "q1")  # not delivered live: read from history after the join
    await turns()
    assert sock.data == []
    bus.subscribe_gate.set()
    await turns()
    assert sorted(sock.data) == ["q1", "u1"]
    bus.emit("quiz:9", "q2")
    await turns()
    assert of(sock, "q") == ["q1", "q2"]


async def test_a_producers_join_of_a_room_with_no_stream_yet_replays_its_first_events() -> None:
    """The join's position is "empty at" the moment it was read: every entry after is the
    socket's, even those published before this replica followed the room."""
    bus, rep = await started()
    _, sock = await rep.connect("1")
    join = bus.control(KIND_JOIN, "1", ["quiz:9"])
    assert join is not None
    assert join["quiz:9"].seq == EMPTY_SEQ
    bus.emit("quiz:9", "q1")
    await turns()
    assert sock.data == ["q1"]


async def test_a_join_without_a_position_starts_at_the_current_one_and_is_recorded() -> None:
    """The gateway API's `join_room`: no history, and the session learns where the room began."""
    bus, rep = await started()
    conn, sock = await rep.connect("1")
    old = bus.emit("quiz:9", "old")
    await rep.core.enter(conn, {"quiz:9": None})
    bus.emit("quiz:9", "new")
    await turns()
    assert sock.data == ["new"]
    assert rep.room_changes == [(conn.sid, "quiz:9", "j", old)]  # the position after its subscription


async def test_entering_a_room_the_socket_is_in_changes_nothing() -> None:
    bus, rep = await started()
    conn, _ = await rep.connect("1")
    await rep.core.enter(conn, {"user:1": bus.position_now("user:1")})
    assert rep.room_changes == []
    assert conn.pending is None  # not left held
    assert bus.history_reads == []


async def test_a_join_while_the_socket_connects_does_not_end_its_connect_hold() -> None:
    bus, rep = await started()
    sock = FakeSocket()
    conn = Conn("s1", "e1", Identity("1"), sock, None)
    rep.core.register(conn, None)
    await rep.core.attach_rooms(conn, ["user:1"])
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    bus.emit("quiz:9", "q1")
    await turns()
    assert "quiz:9" in conn.rooms
    bus.emit("user:1", "u1")
    await turns()
    assert sock.data == []  # the CONNECT reply is not written: nothing may precede it
    rep.core.accepted(conn)
    assert sorted(sock.data) == ["q1", "u1"]


async def test_a_join_while_a_recovering_socket_reads_its_history_costs_it_no_replayed_event() -> None:
    bus, rep = await started()
    await rep.connect("1")  # another tab: this replica keeps following user:1
    outcome, first = await rep.handshake(Identity("1"))
    assert isinstance(outcome, Accepted)
    conn = outcome.conn
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    bus.emit("user:1", "u missed")
    await turns()
    replay = asyncio.Event()
    bus.history_gates.append(replay)  # the recovery's history read waits; the join's does not
    back = asyncio.create_task(rep.handshake(Identity("1"), pid=conn.pid, offset=first.last_offset))
    await turns()
    bus.emit("user:1", "u live")
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    bus.emit("quiz:9", "q after the join")
    await turns()
    replay.set()
    outcome, sock = await back
    await turns()
    assert isinstance(outcome, Accepted)
    assert outcome.recovered
    assert of(sock, "u") == ["u missed", "u live"]
    assert of(sock, "q") == ["q after the join"]


async def test_a_join_carried_out_during_a_recovery_is_kept_in_the_restored_session() -> None:
    bus, rep = await started()
    outcome, first = await rep.handshake(Identity("1"))
    assert isinstance(outcome, Accepted)
    conn = outcome.conn
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    replay = asyncio.Event()
    bus.history_gates.append(replay)
    back = asyncio.create_task(rep.handshake(Identity("1"), pid=conn.pid, offset=first.last_offset))
    await turns()
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    await turns()
    replay.set()
    restored, sock = await back
    assert isinstance(restored, Accepted)
    assert restored.recovered
    assert "quiz:9" in restored.conn.rooms
    rep.transport_lost(restored.conn)  # drops again before anything reached it in quiz:9
    bus.emit("quiz:9", "q1")
    again, sock = await rep.handshake(Identity("1"), pid=conn.pid, offset=first.last_offset)
    await turns()
    assert isinstance(again, Accepted)
    assert again.recovered
    assert "quiz:9" in again.conn.rooms
    assert sock.data == ["q1"]


async def test_a_room_entered_again_after_its_last_socket_left_starts_at_its_position_then() -> None:
    bus, rep = await started()
    conn, _ = await rep.handshake(Identity("1"))
    assert isinstance(conn, Accepted)
    await rep.core.enter(conn.conn, {"quiz:9": None})
    bus.emit("quiz:9", "q1")  # received by the replica after the leave below
    rep.core.leave(conn.conn, "quiz:9")
    await turns()
    bus.emit("quiz:9", "q2 while nobody here is in quiz:9")
    bus.tick()
    await rep.core.enter(conn.conn, {"quiz:9": None})
    await turns()
    assert rep.room_changes[-1] == (conn.conn.sid, "quiz:9", "j", bus.position_now("quiz:9"))
    rep.transport_lost(conn.conn)
    back, again = await rep.handshake(Identity("1"), pid=conn.conn.pid)
    await turns()
    assert isinstance(back, Accepted)
    assert back.recovered
    assert again.data == []  # nothing was published in quiz:9 after it entered the room again


async def test_a_leave_right_after_a_join_wins_though_the_join_has_not_started() -> None:
    """A producer's join and leave arrive in one read: the join's coroutine has not run when
    the leave is applied, and must not put the socket in the room afterwards."""
    bus, rep = await started()
    conn, sock = await rep.connect("1")
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    bus.control(KIND_LEAVE, "1", ["quiz:9"])
    await turns()
    assert "quiz:9" not in conn.rooms
    assert not [change for change in rep.room_changes if change[1:3] == ("quiz:9", "j")]
    bus.emit("quiz:9", "after the leave")
    await turns()
    assert sock.data == []


async def test_a_leave_while_its_join_reads_history_drops_the_replay_and_the_room() -> None:
    bus, rep = await started()
    conn, sock = await rep.connect("1")
    bus.history_gate = asyncio.Event()
    bus.control(KIND_JOIN, "1", ["quiz:9"])
    bus.emit("quiz:9", "q1")  # in the history the join reads
    await turns()  # subscribed to quiz:9, reading its history
    leave = bus.control(KIND_LEAVE, "1", ["quiz:9"])
    assert leave is not None
    bus.emit("quiz:9", "q2 after the leave")
    await turns()
    bus.history_gate.set()
    await turns()
    assert "quiz:9" not in conn.rooms
    assert sock.data == []
    assert [change for change in rep.room_changes if change[1] == "quiz:9"] == [
        (conn.sid, "quiz:9", "l", leave["quiz:9"])]
    assert "quiz:9" not in rep.core.registry.rooms
