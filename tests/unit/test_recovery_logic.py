"""Connection state recovery, in process: `Recovery.find` (which session, which span of which
room) and `ConnectSequence` + `DeliveryCore.recover_rooms` (the replay), on `MemoryBackend`, the
real in-process bus, and on `FakeBus` where the test needs a revocation, a lost stream or a hand
on the record.

What is proved: a client back with its offset (its position vector) gets, in each of its rooms,
every event after its position there, or after where its session entered the room when it
received nothing there, once, in order within the room, before newer ones; a room joined while
away replays from its join and a room left while away up to the leave; broadcasts are replayed;
the rooms are what the new token and the room policy allow. When a room's replay cannot be exact
(its position trimmed away, lost in a failover, the stream lost; an empty start with entries
trimmed since) the client gets a new session (`recovered` false), never a short replay. A
session is refused after a revocation, past its window, with an offset that is not ours, and is
not found under another user, each counted under its own label.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from gateway.bus.memory_bus import MemoryBackend
from gateway.delivery.attach import HistoryLost
from gateway.delivery.connect import Accepted, Refused
from gateway.delivery.offsets import EMPTY_SEQ, component
from gateway.delivery.recovery import Recovery, Restorable
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import EVERYONE, Position
from publisher.session import SessionRecord
from tests.unit.delivery_fakes import EVENT, FakeBus, FakeSocket, Replica, turns

STUDENT = Identity("1", classrooms=("7",))


async def memory_replica(max_len: int = 100) -> tuple[MemoryBackend, Replica]:
    bus = MemoryBackend(history_max_len=max_len, window_s=60)
    return bus, await Replica(bus).start()


async def fake_replica() -> tuple[FakeBus, Replica]:
    bus = FakeBus()
    return bus, await Replica(bus).start()


async def connected(rep: Replica, identity: Identity = STUDENT) -> tuple[Conn, FakeSocket]:
    outcome, sock = await rep.handshake(identity)
    assert isinstance(outcome, Accepted)
    assert not outcome.recovered
    assert outcome.conn.pid is not None
    return outcome.conn, sock


async def back(rep: Replica, conn: Conn, offset: str | None, identity: Identity = STUDENT,
               ) -> tuple[Accepted, FakeSocket]:
    """The client reconnects with `{pid, offset}`, as socket.io-client >= 4.6 does, later:
    what was published meanwhile has reached the replica (and none of its sockets)."""
    await turns()
    outcome, sock = await rep.handshake(identity, pid=conn.pid, offset=offset)
    assert isinstance(outcome, Accepted), outcome
    return outcome, sock


async def emit(rep: Replica, room: str | None, data: object) -> Position:
    ms, _, seq = (await rep.core.publish(EVENT, data, room)).partition("-")
    return Position(int(ms), int(seq))


def of(sock: FakeSocket, prefix: str) -> list[str]:
    """The payloads of one room, in the order written (payloads name their room)."""
    return [d for d in sock.data if d.startswith(prefix)]


# -- replay ----------------------------------------------------------------------------------


async def test_a_client_back_with_its_offset_gets_what_it_missed_once_in_order_then_live_events() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", "u0")
    await emit(rep, "classroom:7", "c0")
    await turns()
    rep.transport_lost(conn)
    for room, data in [("classroom:7", "c1"), ("user:1", "u1"), ("classroom:8", "x"), ("user:2", "x"),
                       ("classroom:7", "c2"), ("user:1", "u2")]:
        await emit(rep, room, data)
    outcome, sock = await back(rep, conn, first.last_offset)
    assert outcome.recovered
    assert outcome.conn.sid == conn.sid
    await emit(rep, "user:1", "u3")
    await turns()
    assert (of(sock, "u"), of(sock, "c")) == (["u1", "u2", "u3"], ["c1", "c2"])
    assert len(sock.data) == 5
    assert rep.counters.recoveries == ["recovered"]
    assert rep.counters.handshakes == ["ok", "recovered"]
    assert rep.counters.replayed == 4


async def test_each_room_replays_from_its_own_position_in_the_offset() -> None:
    """Positions are per room: the client received u1 in user:1, published after c1 in
    classroom:7, which it did not receive (classroom:7's shard was unreachable meanwhile). Its
    offset says so, and classroom:7 is replayed after c0, not after anything newer elsewhere."""
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("classroom:7", "c0")
    await turns()
    rep.channels_lost(["classroom:7"])
    bus.emit("classroom:7", "c1")
    bus.tick()
    bus.emit("user:1", "u1")
    await turns()
    assert first.data == ["c0", "u1"]
    rep.transport_lost(conn)
    outcome, sock = await back(rep, conn, first.last_offset)
    await turns()
    assert outcome.recovered
    assert sock.data == ["c1"]


async def test_events_published_during_the_restore_arrive_once_in_order_after_the_replay() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    bus.emit("user:1", "u1")
    bus.subscribe_gate, bus.history_gate = asyncio.Event(), asyncio.Event()
    handshake = asyncio.create_task(back(rep, conn, first.last_offset))
    await turns()  # registered, its rooms' SUBSCRIBE not confirmed
    bus.emit("user:1", "u2")  # not followed yet: reaches it through history only
    bus.subscribe_gate.set()
    await turns()  # subscribed, its history being read
    bus.emit("user:1", "u3")  # live and in the history being read
    await turns()
    bus.history_gate.set()
    outcome, sock = await handshake
    assert outcome.recovered
    assert sock.data == ["u1", "u2", "u3"]


async def test_a_client_that_received_nothing_is_replayed_from_its_session_start() -> None:
    _, rep = await memory_replica()
    await emit(rep, "user:1", "u before the session")
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    await emit(rep, "user:1", "u while away")
    await emit(rep, None, "* while away")
    outcome, sock = await back(rep, conn, offset=None)
    await turns()
    assert outcome.recovered
    assert sorted(sock.data) == ["* while away", "u while away"]


async def test_broadcasts_sent_while_away_are_replayed_with_the_rooms_events() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", "u0")
    await emit(rep, None, "*0")
    await turns()
    rep.transport_lost(conn)
    await emit(rep, None, "*1")
    await emit(rep, "user:1", "u1")
    _, sock = await back(rep, conn, first.last_offset)
    await emit(rep, None, "*2")
    await turns()
    assert (of(sock, "*"), of(sock, "u")) == (["*1", "*2"], ["u1"])


async def test_a_recovered_sockets_offsets_carry_its_vector_on_so_a_second_recovery_is_exact() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", "u0")
    await emit(rep, "classroom:7", "c0")
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "classroom:7", "c1")
    _, second = await back(rep, conn, first.last_offset)
    await turns()
    assert second.data == ["c1"]  # its offset still names u0 for user:1
    rep.transport_lost(rep.core.get(conn.sid))  # type: ignore[arg-type]
    await emit(rep, "user:1", "u1")
    await emit(rep, "classroom:7", "c2")
    outcome, third = await back(rep, conn, second.last_offset)
    await turns()
    assert outcome.recovered
    assert sorted(third.data) == ["c2", "u1"]


async def test_a_room_joined_while_away_replays_from_its_join_not_from_the_offset() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1"))
    await emit(rep, "user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    at = await emit(rep, "quiz:9", "q before the join")
    assert conn.pid is not None
    bus.session_rooms(conn.pid, "1", ["user:1", "quiz:9"], "quiz:9", "j", str(at))  # a producer's join
    await emit(rep, "quiz:9", "q after the join")
    await emit(rep, "user:1", "u mine")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sorted(sock.data) == ["q after the join", "u mine"]
    assert "quiz:9" in outcome.conn.rooms


async def test_a_room_of_the_token_left_while_away_replays_up_to_the_leave() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    at = await emit(rep, "classroom:7", "c before the leave")
    assert conn.pid is not None
    bus.session_rooms(conn.pid, "1", ["user:1"], "classroom:7", "l", str(at))  # a producer's leave
    await emit(rep, "classroom:7", "c after the leave")
    await emit(rep, "user:1", "u mine")
    outcome, sock = await back(rep, conn, first.last_offset)
    await turns()
    assert outcome.recovered
    assert sorted(sock.data) == ["c before the leave", "u mine"]
    assert "classroom:7" not in outcome.conn.rooms  # a producer's leave stays, whatever the token says
    await emit(rep, "classroom:7", "c later")
    await turns()
    assert "c later" not in sock.data


async def test_a_room_joined_by_a_producer_then_left_while_away_replays_up_to_the_leave() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1"))
    await rep.core.enter(conn, {"quiz:9": None})  # joined while connected: in the session
    await emit(rep, "user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    at = await emit(rep, "quiz:9", "q before the leave")
    assert conn.pid is not None
    bus.session_rooms(conn.pid, "1", ["user:1"], "quiz:9", "l", str(at))
    await emit(rep, "quiz:9", "q after the leave")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["q before the leave"]
    assert "quiz:9" not in outcome.conn.rooms


async def test_a_room_a_producer_put_the_socket_in_is_rejoined_with_what_it_missed() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep, Identity("1"))
    bus.control("join", "1", ["quiz:9"])
    bus.emit("quiz:9", "q0")
    await turns()
    assert first.data == ["q0"]
    rep.transport_lost(conn)
    bus.emit("quiz:9", "q1")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert "quiz:9" in outcome.conn.rooms
    assert sock.data == ["q1"]


async def test_a_room_the_policy_denies_is_neither_rejoined_nor_replayed() -> None:
    """A session record naming admin:all (written by anyone with access to Redis) does not put
    a student's socket there."""
    bus, rep = await fake_replica()
    conn, first = await connected(rep, Identity("1"))
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    assert conn.pid is not None
    bus.session_rooms(conn.pid, "1", ["user:1", "admin:all", "user:2"], "admin:all", "j", "1000-0")
    bus.session_rooms(conn.pid, "1", ["user:1", "admin:all", "user:2"], "user:2", "j", "1000-0")
    bus.emit("admin:all", "secret")
    bus.emit("user:2", "private")
    bus.emit("user:1", "u mine")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["u mine"]
    assert list(outcome.conn.rooms) == ["user:1"]


async def test_a_downgraded_token_loses_the_rooms_it_no_longer_grants() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1", role="teacher", classrooms=("7",)))
    await emit(rep, "user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "classroom:7", "c1")
    await emit(rep, "teacher:1", "t1")
    await emit(rep, "user:1", "u1")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))  # a student now, no class
    await turns()
    assert outcome.recovered
    assert sock.data == ["u1"]
    assert list(outcome.conn.rooms) == ["user:1"]


async def test_a_token_granting_a_new_room_on_recovery_still_gets_the_missed_broadcasts() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1", classrooms=("7",)))
    await emit(rep, "user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    await emit(rep, None, "* while away")
    await emit(rep, "user:1", "u1")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1", classrooms=("7", "8")))
    await turns()
    assert outcome.recovered
    assert "classroom:8" in outcome.conn.rooms  # from now on
    assert sorted(sock.data) == ["* while away", "u1"]


async def test_a_recovering_client_whose_old_transport_is_still_open_here_replaces_it() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    outcome, sock = await back(rep, conn, first.last_offset)  # the old one has not noticed yet
    assert outcome.recovered
    assert first.transport_closed
    await emit(rep, "user:1", 1)
    await turns()
    assert (first.data, sock.data) == ([0], [1])
    assert len(rep.core) == 1


async def test_two_tabs_of_one_user_each_recover_their_own_session() -> None:
    _, rep = await memory_replica()
    tab1, first1 = await connected(rep)
    tab2, first2 = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(tab1)
    await emit(rep, "user:1", 1)
    rep.transport_lost(tab2)
    await emit(rep, "user:1", 2)
    back1, sock1 = await back(rep, tab1, first1.last_offset)
    back2, sock2 = await back(rep, tab2, first2.last_offset)
    await turns()
    assert (back1.recovered, back2.recovered) == (True, True)
    assert (back1.conn.sid, back2.conn.sid) == (tab1.sid, tab2.sid)
    assert sock1.data == sock2.data == [1, 2]


async def test_a_stream_that_expired_after_a_quiet_spell_is_recovered_with_nothing_to_replay() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep, Identity("1"))
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    bus.expire("user:1")  # its last entry is older than a stream's lifetime: nothing was missed
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    assert outcome.recovered
    bus.emit("user:1", "u1")
    await turns()
    assert sock.data == ["u1"]


async def test_an_empty_room_entered_by_the_session_replays_all_its_entries_when_none_was_trimmed() -> None:
    _, rep = await memory_replica(max_len=2)
    conn, _ = await connected(rep, Identity("1"))
    rep.transport_lost(conn)
    await emit(rep, "user:1", "u1")
    await emit(rep, "user:1", "u2")
    outcome, sock = await back(rep, conn, None, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["u1", "u2"]


# -- not recovered: a new session, never a short replay --------------------------------------


async def not_recovered(rep: Replica, conn: Conn, offset: str | None, identity: Identity = STUDENT,
                        label: str = "history_lost") -> FakeSocket:
    outcome, sock = await back(rep, conn, offset, identity)
    await turns()
    assert not outcome.recovered
    assert (outcome.conn.sid, outcome.conn.pid) != (conn.sid, conn.pid)
    assert rep.counters.recoveries == [label]
    assert rep.core.get(conn.sid) is None
    assert sock.data == []
    return sock


async def test_history_trimmed_past_the_offset_gives_a_new_session_and_no_replay() -> None:
    _, rep = await memory_replica(max_len=2)
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    for i in (1, 2, 3):  # 0 and 1 are trimmed: the history after 0 has a hole
        await emit(rep, "user:1", i)
    sock = await not_recovered(rep, conn, first.last_offset)
    await emit(rep, "user:1", "new")
    await turns()
    assert sock.data == ["new"]


async def test_an_empty_start_with_entries_trimmed_since_gives_a_new_session() -> None:
    """The session entered user:1 when it was empty and received nothing: with entries trimmed
    since, some of what followed the start may be gone."""
    _, rep = await memory_replica(max_len=2)
    conn, _ = await connected(rep, Identity("1"))
    rep.transport_lost(conn)
    for i in (1, 2, 3):
        await emit(rep, "user:1", i)
    await not_recovered(rep, conn, None, Identity("1"))


async def test_a_busy_room_trimmed_before_the_offset_does_not_prevent_recovery() -> None:
    _, rep = await memory_replica(max_len=2)
    conn, first = await connected(rep)
    for i in range(4):  # trimmed, but all before the offset
        await emit(rep, "user:1", i)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "user:1", 4)
    outcome, sock = await back(rep, conn, first.last_offset)
    await turns()
    assert outcome.recovered
    assert sock.data == [4]


async def test_a_position_a_failover_lost_gives_a_new_session() -> None:
    """The event was delivered live through the old primary, which died before its replica got
    it: the client's position in the room no longer exists."""
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("user:1", "u0")
    bus.emit("user:1", "u1")
    await turns()
    rep.transport_lost(conn)
    bus.lose_writes("user:1", 1)
    bus.emit("user:1", "u2")
    await not_recovered(rep, conn, first.last_offset)


async def test_a_stream_lost_and_grown_again_gives_a_new_session() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    bus.lose_stream("user:1")
    bus.emit("user:1", "u1")
    await not_recovered(rep, conn, first.last_offset)


async def test_a_stream_lost_within_its_lifetime_gives_a_new_session() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("user:1", "u0")
    await turns()
    rep.transport_lost(conn)
    bus.lose_stream("user:1")
    await not_recovered(rep, conn, first.last_offset)


async def test_history_the_bus_cannot_read_gives_a_new_session() -> None:
    bus, rep = await fake_replica()
    conn, first = await connected(rep)
    bus.emit("user:1", 0)
    await turns()
    rep.transport_lost(conn)
    bus.history_available = False
    outcome, _ = await back(rep, conn, first.last_offset)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["history_lost"]


async def test_recover_rooms_raises_history_lost_rather_than_replay_part_of_it() -> None:
    bus, rep = await fake_replica()
    first = bus.emit("user:1", 1)
    bus.emit("user:1", 2)
    bus.trim("user:1", 1)
    everyone = bus.position_now(EVERYONE)
    sock = FakeSocket()
    conn = Conn("s", "e", Identity("1"), sock, "pid")
    rep.core.register(conn, None)
    for lost in (first, Position(first.ms, 7)):  # trimmed; never an entry
        with pytest.raises(HistoryLost):
            await rep.core.recover_rooms(conn, [("user:1", lost, None), (EVERYONE, everyone, None)], {})
    rep.core.accepted(conn)
    assert sock.data == []


async def test_an_offset_that_is_not_ours_gives_a_new_session() -> None:
    _, rep = await memory_replica()
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    await not_recovered(rep, conn, "e1:1-1", label="bad_offset")  # a version 1 offset


# -- refused sessions, each under its own label -----------------------------------------------


async def test_a_pid_of_another_user_is_not_found_under_the_tokens_user() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "user:1", "private")
    await not_recovered(rep, conn, first.last_offset, Identity("2"), label="unknown_session")


async def test_a_session_created_before_a_revocation_is_refused_as_revoked() -> None:
    bus, rep = await fake_replica()
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    bus.revoked["1"] = int(time.time() * 1000) + 1  # a kick after the session began
    await not_recovered(rep, conn, None, label="revoked")


async def test_a_session_past_its_window_is_refused_as_expired() -> None:
    bus, rep = await fake_replica()
    conn, _ = await connected(rep)
    conn.eio.close_transport()
    rep.core.forget(conn.sid)
    assert conn.pid is not None
    bus.end_session(conn.pid, "1", int(time.time() * 1000) - 61_000)  # it went away 61 s ago
    await not_recovered(rep, conn, None, label="expired")


async def test_a_session_ended_by_its_client_leaving_is_gone() -> None:
    """A client that left the namespace itself does not come back: its session is dropped."""
    _, rep = await fake_replica()
    conn, _ = await connected(rep)
    rep.core.forget(conn.sid)
    assert conn.pid is not None
    rep.recovery.ended(conn.pid, "1", may_return=False)
    await not_recovered(rep, conn, None, label="unknown_session")


async def test_recovery_off_gives_no_pid_and_ignores_one() -> None:
    bus = FakeBus()
    rep = await Replica(bus, window_s=0).start()
    outcome, _ = await rep.handshake(STUDENT, pid="whatever", offset="AAAAAA:1.1")
    assert isinstance(outcome, Accepted)
    assert outcome.conn.pid is None
    assert not outcome.recovered
    assert rep.counters.recoveries == []
    assert bus.sessions == {}


async def test_no_session_is_offered_when_the_bus_cannot_say_where_the_socket_starts() -> None:
    bus, rep = await fake_replica()
    bus.available = False
    outcome, _ = await rep.handshake(STUDENT)
    assert isinstance(outcome, Accepted)
    assert outcome.conn.pid is None
    assert bus.sessions == {}


async def test_a_bad_token_is_refused_before_recovery_is_considered() -> None:
    _, rep = await fake_replica()
    outcome = await rep.connects.run("eio", FakeSocket(), {"token": "forged", "pid": "p"}, {})
    assert isinstance(outcome, Refused)
    assert outcome.code.code == "token_invalid"
    assert rep.counters.handshakes == ["token_invalid"]
    assert rep.counters.recoveries == []


# -- Recovery.find: which spans --------------------------------------------------------------


def record(**fields: object) -> SessionRecord:
    now = int(time.time() * 1000)
    base: dict[str, object] = {
        "sid": "s", "user": "1", "rooms": ("user:1", "quiz:9"),
        "starts": {"user:1": "1000-1", "quiz:9": "1000-8", EVERYONE: "900-0"},
        "created_ms": now, "alive_ms": now,
    }
    base.update(fields)
    return SessionRecord(**base)  # type: ignore[arg-type]


def offset(**positions: tuple[int, int]) -> str:
    rooms = {"user_1": "user:1", "quiz_9": "quiz:9", "lobby": "lobby", "everyone": EVERYONE, "other": "other"}
    return b",".join(component(rooms[name], ms, seq) for name, (ms, seq) in positions.items()).decode()


async def find(rec: SessionRecord, given: object = None) -> Restorable:
    bus = FakeBus()
    bus.sessions[("1", "pid")] = rec
    restorable, outcome = await Recovery(bus, 60).find(Identity("1"), "pid", given)
    assert outcome == "recovered"
    assert restorable is not None
    return restorable


async def test_find_replays_each_room_after_the_later_of_its_offset_component_and_its_start() -> None:
    restorable = await find(record(), offset(user_1=(1000, 5), quiz_9=(1000, 3), everyone=(950, 0), other=(1, 1)))
    assert restorable.spans == [
        ("user:1", Position(1000, 5), None),  # the offset is later than the start
        ("quiz:9", Position(1000, 8), None),  # the start is later: it joined after that position
        (EVERYONE, Position(950, 0), None),
    ]
    assert restorable.offset == {"user:1": Position(1000, 5), "quiz:9": Position(1000, 3),
                                 EVERYONE: Position(950, 0)}  # `other` is not a room of the session
    assert restorable.rooms == ["user:1", "quiz:9"]


async def test_find_without_an_offset_starts_each_room_at_the_sessions_start() -> None:
    restorable = await find(record())
    assert restorable.spans == [("user:1", Position(1000, 1), None), ("quiz:9", Position(1000, 8), None),
                                (EVERYONE, Position(900, 0), None)]


async def test_find_replays_a_room_left_after_the_position_up_to_the_leave_only() -> None:
    restorable = await find(
        record(rooms=("user:1",), starts={"user:1": "1000-1", "quiz:9": "1000-2", "lobby": "1000-1", EVERYONE: "9-0"},
               left={"quiz:9": "1000-9", "lobby": "1000-3"}),
        offset(user_1=(1000, 5), lobby=(1000, 4)))
    assert restorable.spans == [
        ("user:1", Position(1000, 5), None),
        ("quiz:9", Position(1000, 2), Position(1000, 9)),  # nothing received there: from its start
        (EVERYONE, Position(9, 0), None),  # lobby: it had everything up to its leave
    ]
    assert restorable.rooms == ["user:1"]


async def test_find_starts_an_empty_room_at_its_empty_position() -> None:
    restorable = await find(record(rooms=("user:1",), starts={"user:1": f"1000-{EMPTY_SEQ}", EVERYONE: "9-0"}))
    assert restorable.spans[0] == ("user:1", Position(1000, EMPTY_SEQ), None)


def _colliding_offset() -> str:
    return component("quiz:6419", 1, 0).decode()


@pytest.mark.parametrize(("pid", "rec", "given", "label"), [
    ("", None, None, "bad_pid"),
    ("x" * 65, None, None, "bad_pid"),
    (["pid"], None, None, "bad_pid"),
    ("pid", None, None, "unknown_session"),
    ("pid", record(user="2"), None, "foreign_user"),  # written under user 1's key by someone else
    ("pid", record(alive_ms=0), None, "expired"),
    ("pid", record(created_ms=1), None, "revoked"),
    ("pid", record(), "not an offset", "bad_offset"),
    ("pid", record(), 5, "bad_offset"),
    ("pid", record(rooms=("user:1", "quiz:6419", "quiz:170195")), _colliding_offset(), "bad_offset"),
    ("pid", record(starts={"user:1": "1000-1", EVERYONE: "9-0"}), None, "no_start"),  # quiz:9 has none
    ("pid", record(starts={"user:1": "1000-1", "quiz:9": "1000-8"}), None, "no_start"),  # nor EVERYONE
    ("pid", record(starts={"user:1": "1000-1", "quiz:9": "nonsense", EVERYONE: "9-0"}), None, "no_start"),
])
async def test_find_refuses_with_the_outcome_label(pid: object, rec: SessionRecord | None, given: object,
                                                   label: str) -> None:
    bus = FakeBus()
    bus.revoked["1"] = 2
    if rec is not None:
        # The parameters were made at collection, maybe more than the window ago on a busy
        # machine: a record meant to be alive is made alive now (0 and 1 are meant as old).
        now = int(time.time() * 1000)
        rec = dataclasses.replace(rec, created_ms=now if rec.created_ms > 1 else rec.created_ms,
                                  alive_ms=now if rec.alive_ms > 1 else rec.alive_ms)
        bus.sessions[("1", "pid")] = rec
    restorable, outcome = await Recovery(bus, 60).find(Identity("1"), pid, given)
    assert restorable is None
    assert outcome == label


async def test_find_says_bus_unavailable_when_the_session_cannot_be_read() -> None:
    bus = FakeBus()
    bus.available = False
    assert await Recovery(bus, 60).find(Identity("1"), "pid", None) == (None, "bus_unavailable")


async def test_find_says_bad_session_when_the_stored_session_does_not_parse() -> None:
    class Unparsable(FakeBus):
        async def load_session(self, user: str, pid: str) -> tuple[SessionRecord, int] | None:
            return SessionRecord.from_hash({"sid": "s"}), 0  # raises SessionError: no user

    assert await Recovery(Unparsable(), 60).find(Identity("1"), "pid", None) == (None, "bad_session")
