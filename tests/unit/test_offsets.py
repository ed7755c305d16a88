"""`delivery.offsets`: the client's offset is the socket's position vector (docs/wire-protocol.md,
"The client's offset"), and the fan-out frame that carries it is built once per distinct tail.

The offset is the only state a client brings back: decoded wrong, a recovery replays the wrong
span of a room, so every way of getting it wrong is refused (`OffsetError`, the session starts
fresh) rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from gateway.delivery.fanout import outgoing
from gateway.delivery.offsets import (
    EMPTY_SEQ,
    MAX_COMPONENTS,
    OffsetError,
    component,
    decode,
    key_of,
    position_of,
    room_hash,
)
from gateway.policy.rooms import Identity
from publisher.envelope import EVERYONE, Event, Position
from tests.unit.delivery_fakes import FakeBus, Replica, turns


def encode(components: Iterable[bytes]) -> bytes:
    """An offset as a socket writes it: its components, comma-separated."""
    return b",".join(components)


def components_of(positions: Mapping[str, tuple[int, int]]) -> dict[str, bytes]:
    return {room: component(room, ms, seq) for room, (ms, seq) in positions.items()}

# Two room names whose 6-character digests are the same (found by a birthday search, 36 bits).
COLLIDING = ("quiz:6419", "quiz:170195")


def test_the_vector_round_trips_through_the_offset() -> None:
    positions = {
        "user:42": (1_733_212_345_678, 0),
        "classroom:7": (1_733_212_345_679, 12),
        EVERYONE: (1, 2**40),
        "quiz:9": (1_733_212_345_000, EMPTY_SEQ),  # "empty at": the largest seq there is
        "auth0|5f7c8ec7 é": (0, 0),
    }
    offset = encode(components_of(positions).values()).decode()
    assert decode(offset, positions) == positions
    assert decode(offset, list(reversed(positions))) == positions  # the order of the rooms is not the key


def test_each_component_is_the_rooms_digest_and_the_ids_parts_in_base_36() -> None:
    assert component("user:42", 36, 35) == room_hash("user:42") + b":10.z"
    assert len(room_hash("x" * 300)) == 6  # a long room name costs the offset 6 characters
    assert all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in room_hash("user:42"))


def test_an_empty_offset_gives_no_position_and_the_session_starts_decide() -> None:
    assert decode("", ["user:1"]) == {}


def test_components_of_rooms_the_session_does_not_know_are_ignored() -> None:
    offset = encode(components_of({"user:1": (5, 1), "quiz:old": (6, 0), "classroom:7": (7, 3)}).values())
    assert decode(offset.decode(), ["user:1", "classroom:7"]) == {"user:1": (5, 1), "classroom:7": (7, 3)}
    assert decode(offset.decode(), []) == {}


def test_two_rooms_of_the_session_sharing_a_digest_make_every_component_untrustworthy() -> None:
    a, b = COLLIDING
    assert room_hash(a) == room_hash(b)
    offset = encode([component(a, 5, 0)]).decode()
    with pytest.raises(OffsetError):
        decode(offset, ["user:1", a, b])
    assert decode(offset, ["user:1", a]) == {a: (5, 0)}  # one of them alone is no ambiguity


@pytest.mark.parametrize("offset", [
    None,
    5,
    ["AAAAAA:1.2"],
    b"AAAAAA:1.2",
    "e1:1000-5",  # a version 1 offset
    "1000-5",
    "AAAAAA:1.2,",  # an empty component
    ",AAAAAA:1.2",
    "AAAAAA:1.2,,BBBBBB:1.2",
    "AAAAA:1.2",  # a digest of 5 characters
    "AAAAAAA:1.2",  # of 7
    "AAAA+/:1.2",  # not URL-safe base64
    "AAAAAA:1",  # no seq
    "AAAAAA:.1",
    "AAAAAA:1.",
    "AAAAAA:A.1",  # base 36 is lower case
    "AAAAAA:1.2.3",
    "AAAAAA:1-2",
    "AAAAAA:" + "1" * 12 + ".0",  # an ms of 12 base-36 digits: beyond any clock
    "AAAAAA:1." + "1" * 14,
    " AAAAAA:1.2",
    "AAAAAA:1.2 ",
    "AAAAAA:1.2\n",
    "AAAAAA:\uff11.2",  # a fullwidth digit
    ",".join(["AAAAAA:1.2"] * (MAX_COMPONENTS * 4)),  # longer than any socket's vector
])
def test_a_malformed_offset_is_refused(offset: object) -> None:
    with pytest.raises(OffsetError):
        decode(offset, ["user:1"])


def test_keys_order_entries_within_a_room_and_round_trip_to_positions() -> None:
    ids = [(0, 0), (0, 1), (5, 0), (5, 2**32), (5, EMPTY_SEQ), (6, 0), (1_733_212_345_678, 3)]
    keys = [key_of(ms, seq) for ms, seq in ids]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    for ms, seq in ids:
        assert position_of(key_of(ms, seq)) == Position(ms, seq)
    # "empty at 5" is after every entry of ms 5 and before any of ms 6
    assert key_of(5, 10**9) < key_of(5, EMPTY_SEQ) < key_of(6, 0)


# -- the offset on the wire ------------------------------------------------------------------


async def test_each_events_offset_is_the_sockets_position_in_every_room_it_received_in() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, sock = await rep.connect("1", classrooms=("7",))
    rooms = ["user:1", "classroom:7", EVERYONE]
    seen: dict[str, tuple[int, int]] = {}
    for room in ("user:1", "classroom:7", "user:1", None, "classroom:7", "user:1"):
        at = bus.emit(room, "x")
        bus.tick()
        await turns()
        seen[room if room is not None else EVERYONE] = (at.ms, at.seq)
        # the vector after this event: every room's last position, the event's own room first
        assert decode(sock.last_offset, rooms) == seen
        assert sock.last_offset.split(",")[0] == component(room or EVERYONE, at.ms, at.seq).decode()
    assert len(sock.packets) == 6


async def test_sockets_with_the_same_tail_share_one_frame_and_another_tail_gets_its_own() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, a = await rep.connect("1", classrooms=("7",))
    _, b = await rep.connect("2", classrooms=("7",))
    _, c = await rep.connect("3", classrooms=("7",))
    mine = bus.emit("user:3", "only c")  # c's offset now has a component for user:3
    await turns()
    at = bus.emit("classroom:7", "for the class")
    await turns()
    assert a.frames[-1] is b.frames[-1]  # the same tail (nothing else): one frame built
    assert c.frames[-1] is not a.frames[-1]
    assert c.last_offset == encode([component("classroom:7", at.ms, at.seq),
                                    component("user:3", mine.ms, mine.seq)]).decode()
    assert a.last_offset == component("classroom:7", at.ms, at.seq).decode()


def test_an_outgoing_builds_its_packet_once_per_distinct_tail() -> None:
    event = Event("n", {"a": 1}, "classroom:7", 0.0, "5-1", 5, 1)
    out = outgoing(event, with_offset=True)
    first = out.packet(b"")
    assert out.packet(b"") is first
    other = out.packet(b",AAAAAA:1.0")
    assert other is not first
    assert other[0].endswith(b'5.1,AAAAAA:1.0"]')
    assert out.packet(b",AAAAAA:1.0") is other


async def test_a_socket_that_received_in_another_room_since_gets_a_rebuilt_tail() -> None:
    """The tail of room A (the other rooms' components) is cached per socket; an event in room B
    changes B's component, so A's next frame must carry the new one."""
    bus = FakeBus()
    rep = await Replica(bus).start()
    _, sock = await rep.connect("1", classrooms=("7",))
    bus.emit("classroom:7", "a1")
    await turns()
    first_user = bus.emit("user:1", "u1")
    await turns()
    bus.emit("classroom:7", "a2")
    await turns()
    second_user = bus.emit("user:1", "u2")
    await turns()
    last_class = bus.emit("classroom:7", "a3")
    await turns()
    assert first_user != second_user
    assert decode(sock.last_offset, ["user:1", "classroom:7"]) == {
        "user:1": (second_user.ms, second_user.seq), "classroom:7": (last_class.ms, last_class.seq)}


async def test_the_offset_a_client_brings_back_is_decoded_against_its_sessions_rooms() -> None:
    bus = FakeBus()
    rep = await Replica(bus).start()
    outcome, sock = await rep.handshake(Identity("1", classrooms=("7",)))
    at = bus.emit("classroom:7", "x")
    await turns()
    restorable, label = await rep.recovery.find(Identity("1", classrooms=("7",)), outcome.conn.pid,  # type: ignore[union-attr]
                                                sock.last_offset)
    assert label == "recovered"
    assert restorable is not None
    assert restorable.offset == {"classroom:7": at}
