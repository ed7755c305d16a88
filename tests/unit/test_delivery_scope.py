"""Events for several rooms with except rooms (`envelope.Scope`), and controls about the sockets
of a room (`rjoin`, `rleave`, `rkick`), through a replica's real delivery core: what the bridge
needs for @socket.io/redis-emitter's `to(a).to(b).except(c)`, `socketsJoin`, `socketsLeave` and
`disconnectSockets`.

Messages go through the bus as `Commands.scoped` / `Commands.room_control` publish them
(`FakeBus.emit_scoped`, `FakeBus.room_control`), so decoding and routing are covered too.
"""

from __future__ import annotations

import orjson
import pytest

from gateway.delivery.fanout import from_history
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import (
    KIND_ROOM_JOIN,
    KIND_ROOM_KICK,
    KIND_ROOM_LEAVE,
    EnvelopeError,
    Position,
    RoomControl,
    Scope,
    decode,
)
from tests.unit.delivery_fakes import FakeBus, FakeCounters, FakeSocket, Replica, turns


async def started() -> tuple[FakeBus, Replica]:
    bus = FakeBus()
    return bus, await Replica(bus).start()


def test_the_scope_rule() -> None:
    scope = Scope(("a", "b"), frozenset({"x"}))
    assert scope.admits("a", {"a", "b"})
    assert not scope.admits("b", {"a", "b"})  # the copy of a, the first target it is in
    assert scope.admits("b", {"b", "c"})
    assert not scope.admits("a", {"a", "x"})
    assert Scope((), frozenset({"x"})).admits("*", {"y"})
    assert not Scope((), frozenset({"x"})).admits("*", {"x"})


async def test_a_socket_in_two_target_rooms_gets_the_event_once_and_one_in_an_except_room_never() -> None:
    bus, rep = await started()
    _, both = await rep.connect("1", classrooms=("1", "2"))
    _, second = await rep.connect("2", classrooms=("2",))
    _, excluded = await rep.connect("3", classrooms=("1", "3"))
    _, outside = await rep.connect("4", classrooms=("3",))
    bus.emit_scoped(["classroom:2", "classroom:1"], "once", excluded=["classroom:3"])
    bus.emit_scoped(None, "all but 2", excluded=["user:2"])
    await turns()
    assert both.data == ["once", "all but 2"]
    assert second.data == ["once"]
    assert excluded.data == ["all but 2"]
    assert outside.data == ["all but 2"]


async def test_a_replay_applies_the_same_rule() -> None:
    bus = FakeBus()
    bus.emit_scoped(["classroom:1", "classroom:2"], "n")
    conn = Conn("s", "es", Identity("1", classrooms=("1", "2")), FakeSocket(), None)
    conn.rooms.update({"classroom:1": None, "classroom:2": None})
    held = []
    for room in ("classroom:1", "classroom:2"):
        held.extend(from_history(room, bus.streams[room].entries, FakeCounters(), with_offset=True))
    assert conn.release(held) == 1
    assert conn.eio.data == ["n"]  # type: ignore[attr-defined]


async def test_sockets_of_a_room_join_what_the_policy_allows_and_leave() -> None:
    bus, rep = await started()
    a, a_sock = await rep.connect("1", classrooms=("7",))
    b, _ = await rep.connect("2", classrooms=("7",))
    c, _ = await rep.connect("3", classrooms=("8",))
    bus.room_control(KIND_ROOM_JOIN, "classroom:7", ["quiz:9", "user:3", "admin:all"], excluded=["user:2"])
    await turns()
    assert list(a.rooms) == ["user:1", "classroom:7", "quiz:9"]
    assert "quiz:9" not in b.rooms
    assert "quiz:9" not in c.rooms
    assert (a.sid, "quiz:9", "j", bus.position_now("quiz:9")) in rep.room_changes  # its session follows
    bus.emit("quiz:9", "quiz")
    await turns()
    assert a_sock.data == ["quiz"]
    bus.room_control(KIND_ROOM_LEAVE, None, ["quiz:9", "user:1"])  # every socket; never its own room
    await turns()
    assert list(a.rooms) == ["user:1", "classroom:7"]


async def test_sockets_of_a_room_are_disconnected() -> None:
    bus, rep = await started()
    a, _ = await rep.connect("1", classrooms=("7",))
    b, _ = await rep.connect("2", classrooms=("7",))
    await rep.connect("3", classrooms=("8",))
    bus.room_control(KIND_ROOM_KICK, "classroom:7", excluded=["user:2"])
    await turns()
    assert rep.sockets.kicks == [(a.sid, "kicked")]
    assert b.sid not in dict(rep.sockets.kicks)


def test_room_controls_decode_and_bad_ones_are_refused() -> None:
    good = {"v": 2, "k": "rjoin", "t": 1.0, "r": "classroom:7", "rooms": {"quiz:9": "5-0"}, "x": ["user:2"]}
    message = decode(orjson.dumps(good))
    assert message == RoomControl("rjoin", "classroom:7", (("quiz:9", Position(5, 0)),), frozenset({"user:2"}), 1.0)
    for bad in ({**good, "r": 5}, {**good, "rooms": {}}, {**good, "x": "user:2"}, {**good, "x": ["{x}"]},
                {**good, "rooms": {"quiz:9": "five"}}):
        with pytest.raises(EnvelopeError):
            decode(orjson.dumps(bad))
    event = {"v": 2, "k": "e", "t": 1.0, "o": "1-0", "ev": "e", "d": 1, "r": "c", "rs": ["a", "b"]}
    with pytest.raises(EnvelopeError, match="not among"):
        decode(orjson.dumps(event))
