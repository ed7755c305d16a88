"""`delivery.catchup`: a shard's channels go away and come back, room by room.

The sequence the bus drives for the rooms of one shard is `channels_lost` (the connection to the
shard dropped, or a slot moves: messages of those rooms are missed), `channels_restoring`
(SUBSCRIBE sent again: their sockets' live events are held, messages arrive as each channel is
confirmed), `channels_restored` (confirmed: each room's stream after where the replica stood is
read and delivered, merged with what was held, once each). A room whose replay cannot be exact
is never replayed short: its sockets' transports are closed, so their clients reconnect and are
told `recovered: false`. `Replica.channels_lost` also stops `FakeBus` delivering the rooms'
messages: producers go on publishing (to the streams) and nothing of those rooms reaches this
replica; other rooms go on.
"""

from __future__ import annotations

import asyncio

from gateway.delivery.connect import Accepted
from gateway.delivery.offsets import EMPTY_SEQ
from gateway.delivery.registry import Conn
from gateway.policy.rooms import Identity
from publisher.envelope import EVERYONE, KIND_JOIN, Position
from tests.unit.delivery_fakes import EVENT, FakeBus, FakeSocket, Replica, turns

ALL = ["user:1", "user:2", "classroom:7", EVERYONE]


async def started() -> tuple[FakeBus, Replica]:
    bus = FakeBus()
    return bus, await Replica(bus).start()


def of(sock: FakeSocket, prefix: str) -> list[str]:
    """The payloads of one room, in the order written (payloads name their room)."""
    return [d for d in sock.data if d.startswith(prefix)]


async def test_what_was_published_while_away_is_delivered_once_in_order_after_restoration() -> None:
    bus, rep = await started()
    _, one = await rep.connect("1", classrooms=("7",))
    _, two = await rep.connect("2")
    bus.emit("classroom:7", "c0")
    await turns()
    rep.channels_lost(ALL)
    for room, data in (("classroom:7", "c1"), (None, "*1"), ("user:2", "u2"), ("user:1", "u1"),
                       ("classroom:7", "c2"), (None, "*2")):
        bus.emit(room, data)
    await turns()
    assert one.data == ["c0"]
    rep.channels_restoring(ALL)
    await rep.channels_restored(ALL)
    assert (of(one, "c"), of(one, "*"), of(one, "u")) == (["c0", "c1", "c2"], ["*1", "*2"], ["u1"])
    assert (of(two, "*"), of(two, "u")) == (["*1", "*2"], ["u2"])
    assert rep.counters.bus_events == []
    assert rep.counters.replayed == 8  # 5 to one, 3 to two
    bus.emit("classroom:7", "c3")
    await turns()
    assert one.data[-1] == "c3"


async def test_live_events_received_before_every_channel_is_confirmed_do_not_cost_the_catch_up() -> None:
    """(Version 1 lost everything published while away when a live message arrived between
    reconnection and resubscription: its cursor had moved past the missed events.)"""
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(ALL)
    bus.emit("user:1", "u missed")
    bus.emit(None, "* missed")
    rep.channels_restoring(ALL)
    bus.emit("user:1", "u live")  # a channel confirmed first: arrives before the others are
    await turns()
    assert sock.data == ["u0"]  # held
    await rep.channels_restored(ALL)
    assert of(sock, "u") == ["u0", "u missed", "u live"]
    assert of(sock, "*") == ["* missed"]
    assert rep.counters.bus_events == []


async def test_live_events_are_held_from_restoring_to_restored() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    rep.channels_lost(["user:1"])
    rep.channels_restoring(["user:1"])
    bus.emit("user:1", "held")
    await turns()
    assert sock.data == []
    await rep.channels_restored(["user:1"])
    assert sock.data == ["held"]
    assert rep.counters.sent_by_event.total() == 1


async def test_rooms_of_other_shards_are_not_touched() -> None:
    bus, rep = await started()
    _, both = await rep.connect("1", classrooms=("7",))
    _, elsewhere = await rep.connect("2")
    rep.channels_lost(["classroom:7"])
    bus.emit("classroom:7", "c1")
    bus.emit("user:1", "u1")  # another shard: live as ever
    bus.emit("user:2", "u2")
    await turns()
    assert both.data == ["u1"]
    rep.channels_restoring(["classroom:7"])
    bus.emit("user:2", "u2 again")  # not held: user 2 is not in classroom:7
    await turns()
    assert elsewhere.data == ["u2", "u2 again"]
    await rep.channels_restored(["classroom:7"])
    assert both.data == ["u1", "c1"]
    # only classroom:7 is read, after where the replica stood (it was empty when followed)
    assert bus.history_reads == [[("classroom:7", Position(999, EMPTY_SEQ), None)]]


async def test_rooms_restored_one_after_the_other_each_get_their_own_catch_up() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1", classrooms=("7",))
    rep.channels_lost(["user:1", "classroom:7"])
    bus.emit("user:1", "u1")
    bus.emit("classroom:7", "c1")
    rep.channels_restoring(["user:1", "classroom:7"])
    await rep.channels_restored(["user:1"])
    assert sock.data == []  # still held for classroom:7's catch-up
    bus.emit("user:1", "u2")
    await turns()
    await rep.channels_restored(["classroom:7"])
    assert (of(sock, "u"), of(sock, "c")) == (["u1", "u2"], ["c1"])


async def test_a_room_lost_again_before_it_was_restored_is_caught_up_from_where_it_stood_first() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(["user:1"])
    bus.emit("user:1", "u1")
    rep.channels_restoring(["user:1"])
    rep.channels_lost(["user:1"])  # dropped again before its subscription was confirmed
    bus.emit("user:1", "u2")
    rep.channels_restoring(["user:1"])
    await rep.channels_restored(["user:1"])
    assert sock.data == ["u0", "u1", "u2"]


async def test_when_the_channels_drop_again_held_sockets_are_released_and_local_delivery_works() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    rep.channels_lost(ALL)
    rep.channels_restoring(ALL)
    bus.emit("user:1", "held")
    await turns()
    rep.channels_lost(ALL)  # lost before its channels were confirmed
    assert sock.data == ["held"]
    bus.available = False
    assert rep.core.deliver_locally(EVENT, "local", "user:1") == 1
    assert rep.core.deliver_locally(EVENT, "everyone", None) == 1
    assert sock.events[1:] == [[EVENT, "local"], [EVENT, "everyone"]]  # no offset: not replayable


async def test_a_socket_still_connecting_is_not_released_by_the_catch_up() -> None:
    """Its CONNECT reply is not written yet: it is flushed by `accepted`, not before."""
    bus, rep = await started()
    sock = FakeSocket()
    conn = Conn("s1", "e1", Identity("1"), sock, None)
    rep.core.register(conn, None)
    await rep.core.attach_rooms(conn, ["user:1"])
    rep.channels_lost(["user:1"])
    rep.channels_restoring(["user:1"])
    bus.emit("user:1", "x")
    await turns()
    await rep.channels_restored(["user:1"])
    assert sock.data == []
    rep.core.accepted(conn)
    assert sock.data == ["x"]


async def test_a_join_received_during_the_catch_up_window_does_not_cost_the_socket_the_catch_up() -> None:
    """(Version 1: the join ended the socket's hold for the bus, and the catch-up then skipped it.)"""
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(ALL)
    bus.emit("user:1", "u missed")
    rep.channels_restoring(ALL)
    bus.control(KIND_JOIN, "1", ["quiz:9"])  # on user:1's channel, confirmed first
    bus.emit("quiz:9", "q1")
    await turns()
    assert sock.data == ["u0"]  # the join ended its own hold only
    await rep.channels_restored(ALL)
    await turns()
    assert of(sock, "u") == ["u0", "u missed"]
    assert of(sock, "q") == ["q1"]


async def test_catch_up_runs_while_a_join_is_under_way_without_releasing_it_early() -> None:
    """A socket held by a join under way is flushed by the join, not by the catch-up."""
    bus, rep = await started()
    conn, sock = await rep.connect("1")
    bus.history_gate = asyncio.Event()
    entering = asyncio.create_task(rep.core.enter(conn, {"quiz:9": bus.position_now("quiz:9")}))
    await turns()  # the join reads quiz:9's history
    rep.channels_lost(["user:1"])
    rep.channels_restoring(["user:1"])
    bus.emit("user:1", "x")
    await turns()
    catching_up = asyncio.create_task(rep.channels_restored(["user:1"]))
    await turns()
    assert sock.data == []
    bus.history_gate.set()
    await asyncio.gather(entering, catching_up)
    assert sock.data == ["x"]


# -- a catch-up that cannot be exact: the clients are told, never replayed short -----------------


async def session(rep: Replica, identity: Identity) -> tuple[Conn, FakeSocket]:
    outcome, sock = await rep.handshake(identity)
    assert isinstance(outcome, Accepted)
    return outcome.conn, sock


async def told_on_reconnection(rep: Replica, conn: Conn, sock: FakeSocket, identity: Identity) -> None:
    """Its transport was closed: the server forgets the socket, the client reconnects with its
    pid and offset and gets a new session."""
    assert sock.transport_closed
    rep.transport_lost(conn)
    outcome, _ = await rep.handshake(identity, pid=conn.pid, offset=sock.last_offset)
    assert isinstance(outcome, Accepted)
    assert not outcome.recovered
    assert rep.counters.recoveries == ["history_lost"]


async def test_a_room_trimmed_past_where_the_replica_stood_closes_its_sockets_transports() -> None:
    bus, rep = await started()
    identity = Identity("1", classrooms=("7",))
    conn, sock = await session(rep, identity)
    _, other = await rep.connect("2")
    bus.emit("classroom:7", "c0")
    bus.emit("user:2", "u0")
    await turns()
    rep.channels_lost(ALL)
    bus.emit("classroom:7", "c1")
    bus.emit("classroom:7", "c2")
    bus.emit("user:2", "u1")
    bus.trim("classroom:7", 2)  # c0 and c1 trimmed: the stream after c0 has a hole
    rep.channels_restoring(ALL)
    await rep.channels_restored(ALL)
    assert rep.counters.bus_events == ["catchup_gap"]
    assert sock.data == ["c0"]  # never a short replay passed off as complete
    assert other.data == ["u0", "u1"]  # another room's sockets are caught up
    assert not other.transport_closed
    await told_on_reconnection(rep, conn, sock, identity)


async def test_a_failover_that_lost_writes_delivered_live_closes_the_transports_of_the_room() -> None:
    """The promoted replica never had the room's last entries: the positions the replica (and
    its clients) stand at no longer exist, so what follows them cannot be told."""
    bus, rep = await started()
    identity = Identity("1")
    conn, sock = await session(rep, identity)
    bus.emit("user:1", "u0")
    bus.emit("user:1", "u1")
    await turns()
    rep.channels_lost(["user:1"])
    bus.lose_writes("user:1", 1)  # u1 is gone from the stream
    bus.emit("user:1", "u2")
    rep.channels_restoring(["user:1"])
    await rep.channels_restored(["user:1"])
    assert rep.counters.bus_events == ["catchup_gap"]
    assert sock.data == ["u0", "u1"]
    await told_on_reconnection(rep, conn, sock, identity)


async def test_a_stream_lost_within_its_lifetime_closes_the_transports_of_the_room() -> None:
    bus, rep = await started()
    identity = Identity("1")
    conn, sock = await session(rep, identity)
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(["user:1"])
    bus.lose_stream("user:1")  # a flush: the stream grows again from nothing
    bus.emit("user:1", "u1")
    rep.channels_restoring(["user:1"])
    await rep.channels_restored(["user:1"])
    assert rep.counters.bus_events == ["catchup_gap"]
    assert sock.data == ["u0"]
    await told_on_reconnection(rep, conn, sock, identity)


async def test_a_stream_that_expired_after_a_quiet_spell_is_caught_up_exactly() -> None:
    """Its last entry is older than a stream's lifetime: nothing was missed."""
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(["user:1"])
    bus.expire("user:1")
    rep.channels_restoring(["user:1"])
    await rep.channels_restored(["user:1"])
    assert rep.counters.bus_events == []
    assert not sock.transport_closed
    bus.emit("user:1", "u1")
    await turns()
    assert sock.data == ["u0", "u1"]


async def test_a_catch_up_whose_history_read_fails_is_a_gap() -> None:
    bus, rep = await started()
    _, sock = await rep.connect("1")
    bus.emit("user:1", "u0")
    await turns()
    rep.channels_lost(["user:1"])
    bus.emit("user:1", "u1")
    bus.history_available = False
    rep.channels_restoring(["user:1"])
    await rep.channels_restored(["user:1"])
    assert rep.counters.bus_events == ["catchup_gap"]
    assert sock.data == ["u0"]
    assert sock.transport_closed
