"""`delivery.core` (with `subscriptions`): what the core does beyond moving events: producers'
control messages (join, leave, kick), a room's channel followed while a local socket is in it,
presence decided once, local delivery, the heartbeat's snapshot.

Control messages go through the bus as a producer sends them (`FakeBus.control`, on the
channel of `user:<u>`), so the tests cover decoding and routing as well as the effect.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.bus.contract import BusUnavailable
from gateway.delivery.connect import Accepted
from gateway.delivery.offsets import component
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import KIND_JOIN, KIND_KICK, KIND_LEAVE
from tests.unit.delivery_fakes import EVENT, FakeBus, FakeSocket, Replica, turns


async def started() -> tuple[FakeBus, Replica]:
    bus = FakeBus()
    return bus, await Replica(bus).start()


async def with_session(rep: Replica, user: str) -> tuple[Conn, FakeSocket]:
    """A socket with a recoverable session (a pid), through the real connect sequence."""
    outcome, sock = await rep.handshake(Identity(user))
    assert isinstance(outcome, Accepted)
    assert outcome.conn.pid is not None
    return outcome.conn, sock


# -- control messages --------------------------------------------------------------------------


async def test_a_producers_join_puts_every_socket_of_the_user_in_the_room_with_its_events_after_the_join() -> None:
    bus, rep = await started()
    tab1, one = await rep.connect("1")
    tab2, two = await rep.connect("1")
    _, other = await rep.connect("2")
    bus.emit("quiz:9", "before")
    join = bus.control(KIND_JOIN, "1", ["quiz:9"])
    assert join is not None
    bus.emit("quiz:9", "right after")  # before this replica follows quiz:9: from history
    await turns()
    bus.emit("quiz:9", "live")
    await turns()
    assert one.data == two.data == ["right after", "live"]
    assert other.data == []
    assert sorted(rep.room_changes, key=str) == sorted(
        [(tab1.sid, "quiz:9", "j", join["quiz:9"]), (tab2.sid, "quiz:9", "j", join["quiz:9"])], key=str)


async def test_a_producers_join_enters_only_the_rooms_the_policy_allows() -> None:
    bus, rep = await started()
    student, sock = await rep.connect("1")
    bus.control(KIND_JOIN, "1", ["admin:all", "user:2", "teacher:1", "classroom:3"])
    await turns()
    assert list(student.rooms) == ["user:1", "classroom:3"]
    bus.emit("admin:all", "for admins")
    bus.emit("user:2", "for user 2")
    bus.emit("classroom:3", "for the class")
    await turns()
    assert sock.data == ["for the class"]


async def test_admin_all_is_joined_for_an_admin() -> None:
    bus, rep = await started()
    admin, _ = await rep.connect("9", role="admin")
    bus.control(KIND_LEAVE, "9", ["admin:all"])
    await turns()
    bus.control(KIND_JOIN, "9", ["admin:all"])
    await turns()
    assert "admin:all" in admin.rooms


async def test_a_producers_leave_takes_the_sockets_out_of_the_room_but_never_out_of_their_own() -> None:
    bus, rep = await started()
    conn, sock = await rep.connect("1", classrooms=("7",))
    bus.emit("classroom:7", "before")
    leave = bus.control(KIND_LEAVE, "1", ["classroom:7", "user:1"])
    assert leave is not None
    await turns()
    assert list(conn.rooms) == ["user:1"]
    # where in the room's stream: a recovery replays the room up to there
    assert rep.room_changes == [(conn.sid, "classroom:7", "l", leave["classroom:7"])]
    assert bus.unsubscribed == ["classroom:7"]
    bus.emit("classroom:7", "gone")
    bus.emit("user:1", "mine")
    await turns()
    assert sock.data == ["before", "mine"]


async def test_a_kick_disconnects_each_socket_of_the_user_as_kicked_and_clears_its_session() -> None:
    bus, rep = await started()
    tab1, _ = await with_session(rep, "1")
    tab2, _ = await with_session(rep, "1")
    other, _ = await with_session(rep, "2")
    bus.control(KIND_KICK, "1")
    await turns()
    assert sorted(rep.sockets.kicks) == sorted([(tab1.sid, "kicked"), (tab2.sid, "kicked")])
    assert (tab1.pid, tab2.pid) == (None, None)  # its sessions are deleted: never saved again
    assert other.pid is not None


async def test_a_producers_join_and_leave_are_written_to_the_session_for_a_recovery() -> None:
    bus, rep = await started()
    conn, _ = await with_session(rep, "1")
    bus.emit("quiz:9", "q0")
    join = bus.control(KIND_JOIN, "1", ["quiz:9"])
    await turns()
    assert join is not None
    assert conn.pid is not None
    record = bus.sessions[("1", conn.pid)]
    assert record.rooms == ("user:1", "quiz:9")
    assert record.starts["quiz:9"] == str(join["quiz:9"])  # replayed after the join
    assert record.extra == ("quiz:9",)  # entered through a producer: the policy is asked again
    bus.emit("quiz:9", "q1")
    leave = bus.control(KIND_LEAVE, "1", ["quiz:9"])
    await turns()
    assert leave is not None
    record = bus.sessions[("1", conn.pid)]
    assert record.rooms == ("user:1",)
    assert record.left == {"quiz:9": str(leave["quiz:9"])}  # replayed up to the leave


async def test_a_producers_leave_of_a_room_the_socket_is_not_in_changes_nothing() -> None:
    bus, rep = await started()
    conn, _ = await rep.connect("1")
    bus.control(KIND_LEAVE, "1", ["quiz:9"])
    await turns()
    assert rep.room_changes == []
    assert list(conn.rooms) == ["user:1"]
    assert bus.unsubscribed == []


async def test_a_control_message_for_a_user_with_no_socket_here_does_nothing() -> None:
    bus, rep = await started()
    await rep.connect("1")
    for kind, rooms in ((KIND_KICK, None), (KIND_JOIN, ["quiz:9"]), (KIND_LEAVE, ["quiz:9"])):
        bus.control(kind, "2", rooms)
        rep.core.on_message(bus.last_message)  # handed over directly: this replica does not follow user:2
    await turns()
    assert rep.sockets.kicks == []
    assert rep.room_changes == []
    assert rep.counters.received["control"] == 3


# -- channels: followed while a local socket is in the room ---------------------------------------


async def test_a_rooms_channel_is_followed_from_its_first_local_socket_until_its_last_goes() -> None:
    bus, rep = await started()
    a, _ = await rep.connect("1", classrooms=("7",))
    b, _ = await rep.connect("2", classrooms=("7",))
    assert {"user:1", "user:2", "classroom:7"} <= bus.channels
    rep.core.forget(a.sid)
    assert bus.unsubscribed == ["user:1"]
    rep.core.forget(b.sid)
    assert sorted(bus.unsubscribed) == ["classroom:7", "user:1", "user:2"]
    assert rep.core.forget(b.sid) is None  # twice: nothing more


# -- presence: decided once --------------------------------------------------------------------


async def test_a_user_comes_online_with_the_first_socket_and_goes_offline_with_the_last() -> None:
    bus, rep = await started()
    a, _ = await rep.connect("1")
    b, _ = await rep.connect("1")
    c, _ = await rep.connect("2")
    assert bus.online == [("1", True), ("2", True)]
    rep.core.forget(a.sid)
    assert bus.online == [("1", True), ("2", True)]
    rep.core.forget(b.sid)
    rep.core.forget(c.sid)
    assert bus.online == [("1", True), ("2", True), ("1", False), ("2", False)]


async def test_a_connect_whose_transport_closes_meanwhile_leaves_the_user_offline() -> None:
    bus, rep = await started()
    bus.subscribe_gate = asyncio.Event()
    handshake = asyncio.create_task(rep.handshake(Identity("1")))
    await turns()  # registered (online), subscribing its rooms
    registered = next(iter(rep.core.registry.by_sid.values()))  # internal: the Conn the sequence made
    registered.eio.close_transport()
    bus.subscribe_gate.set()
    outcome, _ = await handshake
    assert outcome is None
    assert bus.online == [("1", True), ("1", False)]
    assert len(rep.core) == 0


async def test_a_recovery_that_replaces_a_stale_socket_leaves_the_user_online() -> None:
    bus, rep = await started()
    conn, first = await with_session(rep, "1")
    bus.emit("user:1", 0)
    await turns()
    bus.online.clear()
    outcome, _ = await rep.handshake(Identity("1"), pid=conn.pid, offset=first.last_offset)
    assert isinstance(outcome, Accepted)
    assert outcome.recovered
    assert bus.online[-1] == ("1", True)  # the stale socket's going and the new one's coming, in one turn
    assert rep.core.user_sockets("1") == 1


# -- the rest of the sink and the API's side ----------------------------------------------------


async def test_the_heartbeat_snapshot_names_online_users_and_their_sessions() -> None:
    _, rep = await started()
    conn, _ = await with_session(rep, "1")
    await rep.connect("2")  # no session
    users, sessions = rep.core.heartbeat_snapshot()
    assert sorted(users) == ["1", "2"]
    assert sessions == [(conn.pid, "1")]


async def test_local_delivery_writes_to_attached_sockets_of_the_room_without_an_offset() -> None:
    _, rep = await started()
    _, one = await rep.connect("1", classrooms=("7",))
    _, two = await rep.connect("2")
    assert rep.core.deliver_locally(EVENT, "class", "classroom:7") == 1
    assert rep.core.deliver_locally(EVENT, "all", None) == 2
    assert one.events == [[EVENT, "class"], [EVENT, "all"]]
    assert two.events == [[EVENT, "all"]]


async def test_publish_goes_through_the_bus_and_returns_the_events_position_in_its_room() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    at = await rep.core.publish(EVENT, {"a": 1}, "user:1")
    await turns()
    assert at == str(bus.position_now("user:1"))
    ms, _, seq = at.partition("-")
    assert sock.events == [[EVENT, {"a": 1}, component("user:1", int(ms), int(seq)).decode()]]


async def test_publish_raises_bus_unavailable_when_the_bus_is_down() -> None:
    bus, rep = await started()
    bus.available = False
    with pytest.raises(BusUnavailable):
        await rep.core.publish(EVENT, "x", "user:1")


async def test_each_bus_read_is_one_batch_of_writes_on_the_socket_layer() -> None:
    _, rep = await started()
    rep.core.begin_batch()
    assert rep.sockets.depth == 1
    rep.core.end_batch()
    assert (rep.sockets.depth, rep.sockets.batches) == (0, 1)
