"""Connection state recovery, in process: `Recovery.find` (which session, which spans) and
`ConnectSequence` + `DeliveryCore.recover_rooms` (the replay), on `MemoryBackend`, the real
in-process bus, and on `FakeBus` where the test needs a revocation or a hand on the record.

What is proved: a client back with its offset gets every event of its rooms after it, once, in
order, before newer ones; a room joined while away replays from its join and a room left while
away up to the leave; broadcasts are replayed; when that cannot be done in full (another epoch,
a hole in history) the client gets a new session (`recovered` false), never a short replay; a
session is refused to another user, after a revocation, past its window, each counted under
its own label.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.bus.contract import EVERYONE, Position
from gateway.bus.memory_bus import MemoryBackend
from gateway.delivery.attach import HistoryLost
from gateway.delivery.connect import Accepted, Refused
from gateway.delivery.recovery import Recovery
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.session import SessionRecord
from tests.unit.delivery_fakes import EVENT, FakeBus, FakeSocket, Replica, turns

STUDENT = Identity("1", classrooms=("7",))


async def memory_replica(max_len: int = 100) -> tuple[MemoryBackend, Replica]:
    bus = MemoryBackend(history_max_len=max_len, window_s=60)
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


async def emit(rep: Replica, room: str | None, data: object) -> str:
    return await rep.core.publish(EVENT, data, room)


# -- replay ----------------------------------------------------------------------------------


async def test_a_client_back_with_its_offset_gets_what_it_missed_once_in_order_then_live_events() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    for i, room in enumerate(["classroom:7", "user:1", "classroom:8", "user:2", "classroom:7"], start=1):
        await emit(rep, room, i)
    outcome, sock = await back(rep, conn, first.last_offset)
    assert outcome.recovered
    assert outcome.conn.sid == conn.sid
    await emit(rep, "user:1", 6)
    await turns()
    assert sock.data == [1, 2, 5, 6]
    assert rep.counters.recoveries == ["recovered"]
    assert rep.counters.handshakes == ["ok", "recovered"]


async def test_events_published_during_the_restore_arrive_once_in_order_after_the_replay() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    conn, first = await connected(rep)
    bus.emit("user:1", 0)
    await turns()
    rep.transport_lost(conn)
    bus.emit("user:1", 1)
    bus.subscribe_gate, bus.history_gate = asyncio.Event(), asyncio.Event()
    handshake = asyncio.create_task(back(rep, conn, first.last_offset))
    await turns()  # registered, its rooms' SUBSCRIBE not confirmed
    bus.emit("user:1", 2)  # not followed yet: reaches it through history only
    bus.subscribe_gate.set()
    await turns()  # subscribed, its history being read
    bus.emit("user:1", 3)  # live and in the history being read
    await turns()
    bus.history_gate.set()
    outcome, sock = await handshake
    assert outcome.recovered
    assert sock.data == [1, 2, 3]


async def test_a_client_that_received_nothing_is_replayed_from_its_session_start() -> None:
    _, rep = await memory_replica()
    await emit(rep, "user:1", "before the session")
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    await emit(rep, "user:1", "while away")
    outcome, sock = await back(rep, conn, offset=None)
    await turns()
    assert outcome.recovered
    assert sock.data == ["while away"]


async def test_broadcasts_sent_while_away_are_replayed_with_the_rooms_events() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, None, 1)
    await emit(rep, "user:1", 2)
    _, sock = await back(rep, conn, first.last_offset)
    await emit(rep, None, 3)
    await turns()
    assert sock.data == [1, 2, 3]


async def test_a_room_joined_while_away_replays_from_its_join_not_from_the_offset() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1"))
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "quiz:9", "before the join")
    at = await bus.position()
    assert conn.pid is not None
    bus.session_rooms(conn.pid, ["user:1", "quiz:9"], "quiz:9", "j", at.stream_id)  # a producer's join
    await emit(rep, "quiz:9", "after the join")
    await emit(rep, "user:1", "mine")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["after the join", "mine"]
    assert "quiz:9" in outcome.conn.rooms


async def test_a_room_of_the_token_left_while_away_replays_up_to_the_leave() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "classroom:7", "before the leave")
    at = await bus.position()
    assert conn.pid is not None
    bus.session_rooms(conn.pid, ["user:1"], "classroom:7", "l", at.stream_id)  # a producer's leave
    await emit(rep, "classroom:7", "after the leave")
    await emit(rep, "user:1", "mine")
    outcome, sock = await back(rep, conn, first.last_offset)
    await turns()
    assert outcome.recovered
    assert sock.data == ["before the leave", "mine"]


async def test_a_room_joined_by_a_producer_then_left_while_away_replays_up_to_the_leave() -> None:
    bus, rep = await memory_replica()
    conn, first = await connected(rep, Identity("1"))
    await rep.core.enter(conn, ["quiz:9"], since=None)  # joined while connected: in the session
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "quiz:9", "before the leave")
    at = await bus.position()
    assert conn.pid is not None
    bus.session_rooms(conn.pid, ["user:1"], "quiz:9", "l", at.stream_id)
    await emit(rep, "quiz:9", "after the leave")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["before the leave"]
    assert "quiz:9" not in outcome.conn.rooms


async def test_a_room_the_policy_denies_is_neither_rejoined_nor_replayed() -> None:
    """A session record naming admin:all (written by anyone with access to Redis) does not put
    a student's socket there."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    conn, first = await connected(rep, Identity("1"))
    bus.emit("user:1", 0)
    await turns()
    rep.transport_lost(conn)
    assert conn.pid is not None
    bus.session_rooms(conn.pid, ["user:1", "admin:all"], "admin:all", "j", "0-0")
    bus.emit("admin:all", "secret")
    bus.emit("user:1", "mine")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("1"))
    await turns()
    assert outcome.recovered
    assert sock.data == ["mine"]
    assert "admin:all" not in outcome.conn.rooms


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


# -- not recovered: a new session, never a short replay --------------------------------------


async def test_an_offset_of_another_epoch_gives_a_new_session_and_no_replay() -> None:
    _, rep = await memory_replica()
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    await emit(rep, "user:1", "while away")
    outcome, sock = await back(rep, conn, "otherepoch:1-1")
    assert not outcome.recovered
    assert (outcome.conn.sid, outcome.conn.pid) != (conn.sid, conn.pid)
    assert rep.counters.recoveries == ["history_lost"]
    assert rep.core.get(conn.sid) is None
    await emit(rep, "user:1", "new")
    await turns()
    assert sock.data == ["new"]


async def test_history_trimmed_past_the_offset_gives_a_new_session_and_no_replay() -> None:
    _, rep = await memory_replica(max_len=2)
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    for i in (1, 2, 3):  # 0 and 1 are trimmed: the history after 0 has a hole
        await emit(rep, "user:1", i)
    outcome, sock = await back(rep, conn, first.last_offset)
    await turns()
    assert not outcome.recovered
    assert sock.data == []
    assert rep.counters.recoveries == ["history_lost"]


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


async def test_history_the_bus_cannot_read_gives_a_new_session() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    conn, first = await connected(rep)
    bus.emit("user:1", 0)
    await turns()
    rep.transport_lost(conn)
    bus.history_available = False
    outcome, _ = await back(rep, conn, first.last_offset)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["history_lost"]


async def test_recover_rooms_raises_history_lost_rather_than_replay_part_of_it() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    bus.emit("user:1", 1)
    bus.emit("user:1", 2)
    bus.trim("user:1", 1)
    sock = FakeSocket()
    conn = Conn("s", "e", Identity("1"), sock, "pid", 0)
    rep.core.register(conn, None)
    start = Position(bus.epoch, bus.ms, 0)
    for spans in ([("user:1", Position("other", 1, 1), None)], [("user:1", start, None)]):
        with pytest.raises(HistoryLost):
            await rep.core.recover_rooms(conn, spans)
    assert sock.data == []


async def test_two_tabs_of_one_user_each_recover_their_own_session() -> None:
    _, rep = await memory_replica()
    tab1, first1 = await connected(rep)
    tab2, first2 = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(tab1)
    rep.transport_lost(tab2)
    await emit(rep, "user:1", 1)
    back1, sock1 = await back(rep, tab1, first1.last_offset)
    back2, sock2 = await back(rep, tab2, first2.last_offset)
    await turns()
    assert (back1.recovered, back2.recovered) == (True, True)
    assert (back1.conn.sid, back2.conn.sid) == (tab1.sid, tab2.sid)
    assert sock1.data == sock2.data == [1]


# -- refused sessions, each under its own label -----------------------------------------------


async def test_a_pid_of_another_user_is_refused_as_foreign_user() -> None:
    _, rep = await memory_replica()
    conn, first = await connected(rep)
    await emit(rep, "user:1", 0)
    await turns()
    rep.transport_lost(conn)
    await emit(rep, "user:1", "private")
    outcome, sock = await back(rep, conn, first.last_offset, Identity("2"))
    await turns()
    assert not outcome.recovered
    assert outcome.conn.sid != conn.sid
    assert sock.data == []
    assert rep.counters.recoveries == ["foreign_user"]


async def test_a_session_created_before_a_revocation_is_refused_as_revoked() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    conn, _ = await connected(rep)
    rep.transport_lost(conn)
    bus.revoked["1"] = int(time.time() * 1000) + 1  # a kick after the session began
    outcome, _ = await back(rep, conn, None)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["revoked"]


async def test_a_session_past_its_window_is_refused_as_expired() -> None:
    bus = FakeBus()
    rep = await Replica(bus, window_s=60).start()
    conn, _ = await connected(rep)
    conn.eio.close_transport()
    rep.core.forget(conn.sid)
    assert conn.pid is not None
    bus.end_session(conn.pid, "1", int(time.time() * 1000) - 61_000)  # it went away 61 s ago
    outcome, _ = await back(rep, conn, None)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["expired"]


async def test_a_session_ended_by_its_client_leaving_is_gone() -> None:
    """A client that left the namespace itself does not come back: its session is dropped."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    conn, _ = await connected(rep)
    rep.core.forget(conn.sid)
    assert conn.pid is not None
    rep.recovery.ended(conn.pid, "1", may_return=False)
    outcome, _ = await back(rep, conn, None)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["unknown_session"]


async def test_recovery_off_gives_no_pid_and_ignores_one() -> None:
    bus = FakeBus()
    rep = await Replica(bus, window_s=0).start()
    outcome, _ = await rep.handshake(STUDENT, pid="whatever", offset="e1:1-1")
    assert isinstance(outcome, Accepted)
    assert outcome.conn.pid is None
    assert not outcome.recovered
    assert rep.counters.recoveries == []


async def test_a_bad_token_is_refused_before_recovery_is_considered() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    outcome = await rep.connects.run("eio", FakeSocket(), {"token": "forged", "pid": "p"}, {})
    assert isinstance(outcome, Refused)
    assert outcome.code.code == "token_invalid"
    assert rep.counters.handshakes == ["token_invalid"]
    assert rep.counters.recoveries == []


# -- Recovery.find: which spans --------------------------------------------------------------


def record(**fields: object) -> SessionRecord:
    base: dict[str, object] = {"sid": "s", "user": "1", "rooms": ("user:1", "quiz:9"), "start": "e1:1000-1",
                               "created_ms": int(time.time() * 1000), "alive_ms": int(time.time() * 1000)}
    base.update(fields)
    return SessionRecord(**base)  # type: ignore[arg-type]


async def find(rec: SessionRecord, offset: object = "e1:1000-5") -> tuple[object, str]:
    bus = FakeBus()
    bus.sessions["pid"] = rec
    return await Recovery(bus, 60).find(Identity("1"), "pid", offset)


async def test_find_replays_each_room_from_the_later_of_the_offset_and_its_join() -> None:
    restorable, outcome = await find(record(joined={"quiz:9": "1000-8", "user:1": "1000-2"}))
    assert outcome == "recovered"
    since = Position("e1", 1000, 5)
    assert restorable.spans == [  # type: ignore[attr-defined]
        ("user:1", since, None),
        ("quiz:9", Position("e1", 1000, 8), None),
        (EVERYONE, since, None),
    ]


async def test_find_replays_a_room_left_after_the_offset_up_to_the_leave_only() -> None:
    restorable, _ = await find(record(rooms=("user:1",), left={"quiz:9": "1000-9", "lobby": "1000-3"}))
    since = Position("e1", 1000, 5)
    assert restorable.spans == [  # type: ignore[attr-defined]
        ("user:1", since, None),
        ("quiz:9", since, Position("e1", 1000, 9)),  # left after the offset: up to the leave
        (EVERYONE, since, None),  # lobby was left before the offset: nothing to replay
    ]


async def test_find_without_an_offset_starts_at_the_session_start() -> None:
    restorable, _ = await find(record(), offset=None)
    assert restorable.since == Position("e1", 1000, 1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("pid", "rec", "offset", "label"), [
    ("", None, None, "bad_pid"),
    ("x" * 65, None, None, "bad_pid"),
    (["pid"], None, None, "bad_pid"),
    ("pid", None, None, "unknown_session"),
    ("pid", record(user="2"), None, "foreign_user"),
    ("pid", record(alive_ms=0), None, "expired"),
    ("pid", record(), "not an offset", "bad_offset"),
])
async def test_find_refuses_with_the_outcome_label(pid: object, rec: SessionRecord | None, offset: object,
                                                   label: str) -> None:
    bus = FakeBus()
    if rec is not None:
        bus.sessions["pid"] = rec
    restorable, outcome = await Recovery(bus, 60).find(Identity("1"), pid, offset)
    assert restorable is None
    assert outcome == label


async def test_find_says_bus_unavailable_when_the_session_cannot_be_read() -> None:
    bus = FakeBus()
    bus.available = False
    assert await Recovery(bus, 60).find(Identity("1"), "pid", None) == (None, "bus_unavailable")
