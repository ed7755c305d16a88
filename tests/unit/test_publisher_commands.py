"""publisher.commands: what each publisher call sends, checked without Redis."""

from __future__ import annotations

from typing import Any

import hiredis
import orjson
import pytest

from publisher.cluster import key_slot
from publisher.commands import MAX_EVENTS_PER_CALL, Call, Commands, Emit, Message, pack, scatter
from publisher.envelope import BusNames, Position
from publisher.errors import InvalidEvent, InvalidPayload, InvalidRoom
from publisher.scripts import ONLINE, POSITION, PUBLISH, REPLICAS, REVOKE, ROOMS


def unpack(packed: bytes) -> list[Any]:
    """Read back a RESP command as Redis would."""
    reader = hiredis.Reader()
    reader.feed(packed)
    command = reader.gets()
    assert reader.gets() is False, "exactly one command"
    return command  # type: ignore[no-any-return]


def publish_args(emit: Emit | Call) -> dict[str, Any]:
    """The arguments of a publish call of one event (`emit` is published alone)."""
    call = emit if isinstance(emit, Call) else Commands(BusNames()).publish([emit])
    command = unpack(call.packed)
    assert command[:3] == [b"EVALSHA", PUBLISH.sha.encode(), b"1"]
    history, maxlen, lifetime, channel, envelope = command[3:]
    # what a cluster transport routes by, and what EVAL sends, are the same arguments
    assert [str(a).encode() if isinstance(a, int | str) else a for a in call.args] == command[2:]
    return {"history": history, "channel": channel, "envelope": orjson.loads(envelope),
            "raw": envelope, "maxlen": maxlen, "lifetime": lifetime}


@pytest.fixture
def commands() -> Commands:
    return Commands(BusNames(), history_max_len=1000, recovery_window_s=120)


def test_pack_is_resp() -> None:
    assert pack(("SET", "k", 1, b"\x00v")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$2\r\n\x00v\r\n"
    assert unpack(pack(("GET", "ü"))) == [b"GET", "ü".encode()]


def test_event_to_a_room(commands: Commands) -> None:
    data = {"amount": 50, "reason": "quiz", "newBalance": 1250}
    args = publish_args(commands.event("coins:earned", data, room="classroom:7"))
    assert args["history"] == b"ngw:{classroom:7}:h"
    assert args["channel"] == b"socket.io#/notifications#{classroom:7}#"
    assert args["raw"].endswith(b"}")
    assert b'"o"' not in args["raw"]  # only the script sets the position
    envelope = args["envelope"]
    assert {k: envelope[k] for k in ("v", "k", "ev", "d", "r")} == {
        "v": 2, "k": "e", "ev": "coins:earned", "d": data, "r": "classroom:7"}
    assert isinstance(envelope["t"], float)
    assert (args["maxlen"], args["lifetime"]) == (b"1000", b"240000")  # lifetime: 2 x the window


def test_event_to_a_user_and_to_everyone(commands: Commands) -> None:
    to_user = publish_args(commands.event("x", {}, user=42))
    assert to_user["history"] == b"ngw:{user:42}:h"
    assert to_user["channel"] == b"socket.io#/notifications#{user:42}#"
    assert to_user["envelope"]["r"] == "user:42"
    everyone = publish_args(commands.event("x", {}, broadcast=True))
    assert everyone["channel"] == b"socket.io#/notifications#{*}#"
    assert everyone["history"] == b"ngw:{*}:h"  # broadcasts are replayed on recovery too
    assert everyone["envelope"]["r"] is None


@pytest.mark.parametrize("room", ["user:42", "classroom:7", "quiz:9", "*"])
def test_the_pre_packed_names_are_the_bus_names(room: str) -> None:
    """The hot path builds names from heads; they must be `BusNames`' own, in one slot."""
    names = BusNames("cp", "kp")
    commands = Commands(names)
    call = commands.event("x", {}, broadcast=True) if room == "*" else commands.event("x", {}, room=room)
    args = publish_args(call)
    assert args["history"] == names.history_key(room).encode()
    assert args["channel"] == names.room_channel(room).encode()
    assert key_slot(args["history"]) == key_slot(args["channel"]) == key_slot("{" + room + "}")


def test_eval_fallback_carries_the_same_arguments(commands: Commands) -> None:
    call = commands.publish([commands.event("x", {"a": 1}, room="classroom:7"),
                             commands.event("y", {"b": 2}, user=4)])
    sha, fallback = unpack(call.packed), unpack(call.eval_packed())
    assert fallback[0] == b"EVAL"
    assert fallback[1] == PUBLISH.source
    assert fallback[2:] == sha[2:]


def test_a_publish_call_carries_many_events_in_the_scripts_order(commands: Commands) -> None:
    """publish.lua's interface: N keys, then maxlen and lifetime, then channel and envelope
    per event; the reply is {position, receivers} per event."""
    emits = [commands.event("x", {"n": i}, user=i) for i in range(3)]
    command = unpack(commands.publish(emits).packed)
    assert command[:3] == [b"EVALSHA", PUBLISH.sha.encode(), b"3"]
    assert command[3:6] == [e.key.encode() for e in emits]
    assert command[6:8] == [b"1000", b"240000"]
    assert command[8::2] == [e.channel.encode() for e in emits]
    assert [orjson.loads(env)["d"]["n"] for env in command[9::2]] == [0, 1, 2]
    with pytest.raises(ValueError, match="1 to"):
        commands.publish([])
    with pytest.raises(ValueError, match="1 to"):
        commands.publish(emits * MAX_EVENTS_PER_CALL)


def test_publish_all_groups_by_slot_on_a_cluster_only(commands: Commands) -> None:
    emits = [commands.event("x", {"n": i}, user=i % 5) for i in range(20)]
    [(call, indexes)] = commands.publish_all(emits, by_slot=False)
    assert indexes == list(range(20))
    assert call.args[0] == 20
    plan = commands.publish_all(emits, by_slot=True)
    assert len(plan) == 5, "one call per slot: five users, five slots"
    assert sorted(i for _, indexes in plan for i in indexes) == list(range(20))
    for call, indexes in plan:
        assert indexes == sorted(indexes), "a room's events keep their order"
        assert len({key_slot(emits[i].key) for i in indexes}) == 1
        assert call.args[1:1 + len(indexes)] == tuple(emits[i].key for i in indexes)
    replies = [[f"{i}-0".encode() if j % 2 == 0 else 1 for i in indexes for j in (0, 1)]
               for _, indexes in plan]
    assert scatter(plan, replies, 20) == [f"{i}-0" for i in range(20)]
    many = [commands.event("x", {}, room="quiz:1")] * (MAX_EVENTS_PER_CALL + 1)
    assert [len(ix) for _, ix in commands.publish_all(many, by_slot=False)] == [MAX_EVENTS_PER_CALL, 1]


@pytest.mark.parametrize("target", [
    {}, {"room": "user:1", "user": 1}, {"room": "user:1", "broadcast": True},
    {"user": 1, "broadcast": True},
])
def test_exactly_one_target(commands: Commands, target: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="target"):
        commands.event("x", {}, **target)


def test_arguments_are_checked_before_anything_is_built(commands: Commands) -> None:
    with pytest.raises(InvalidEvent):
        commands.event("disconnect", {}, user=1)
    with pytest.raises(InvalidRoom):
        commands.event("x", {}, room="admin:everyone")
    with pytest.raises(InvalidRoom):
        commands.event("x", {}, room="quiz:9\n")
    with pytest.raises(InvalidRoom, match="hash tags"):
        commands.event("x", {}, room="quiz:{9}")
    with pytest.raises(InvalidRoom, match="everyone"):
        commands.event("x", {}, room="*")
    with pytest.raises(InvalidRoom, match="hash tags"):
        commands.event("x", {}, user="a}b")
    with pytest.raises(ValueError, match="user id"):
        commands.event("x", {}, user=4.2)  # type: ignore[arg-type]
    with pytest.raises(InvalidPayload, match=r"data\.a: a set"):
        commands.event("x", {"a": {1}}, user=1)
    with pytest.raises(InvalidPayload, match="coins:earned: newBalance is required"):
        commands.event("coins:earned", {"amount": 1, "reason": "r"}, user=1, strict=True)


CLASSROOM_NOTIFICATION = {"id": "n1", "userId": None, "type": "info", "title": "Quiz",
                          "message": "The quiz starts", "read": False,
                          "createdAt": "2024-05-01T12:00:00.000Z"}


def test_emit_takes_any_sanitised_payload_for_a_contract_event(commands: Commands) -> None:
    """The contract: `emit` takes any JSON-serialisable payload under the size limit; the
    typed helpers are what checks. A classroom-wide notification has no userId."""
    args = publish_args(commands.event("notification:new", CLASSROOM_NOTIFICATION, room="classroom:7"))
    assert args["envelope"]["d"] == CLASSROOM_NOTIFICATION
    commands.event("coins:earned", {"amount": 1}, user=1)
    commands.event("coins:earned", [1, 2], user=1)


def test_strict_is_opt_in_per_publisher_or_per_emit() -> None:
    strict = Commands(BusNames(), strict=True)
    with pytest.raises(InvalidPayload, match="notification:new: userId must be a string, got None"):
        strict.event("notification:new", CLASSROOM_NOTIFICATION, room="classroom:7")
    strict.event("notification:new", CLASSROOM_NOTIFICATION, room="classroom:7", strict=False)
    lax = Commands(BusNames())
    with pytest.raises(InvalidPayload, match="userId must be a string"):
        lax.event("notification:new", CLASSROOM_NOTIFICATION, room="classroom:7", strict=True)
    with pytest.raises(InvalidPayload, match="userId must be a string"):
        lax.message(Message("notification:new", CLASSROOM_NOTIFICATION, room="classroom:7", strict=True))
    strict.event("x:y", {"anything": None}, user=1)  # events without a schema: nothing to check
    with pytest.raises(ValueError, match="strict must be"):
        Commands(BusNames(), strict="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strict must be"):
        lax.event("x", {}, user=1, strict=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("room", ["quiz:9", "lobby", "School 12 / group #3", "q" * 300, "Admin:all"])
def test_any_room_of_the_grammar_is_a_target(commands: Commands, room: str) -> None:
    args = publish_args(commands.event("x", {}, room=room))
    assert args["channel"] == f"socket.io#/notifications#{{{room}}}#".encode()
    assert args["history"] == f"ngw:{{{room}}}:h".encode()
    assert args["envelope"]["r"] == room


def test_payload_limit_is_an_option() -> None:
    small = Commands(BusNames(), max_payload_bytes=10)
    small.event("x", "12345678", user=1)
    with pytest.raises(InvalidPayload, match="over the limit of 10"):
        small.event("x", "123456789", user=1)


def test_message_is_emit_arguments(commands: Commands) -> None:
    args = publish_args(commands.message(Message("x", [1], user=7)))
    assert args["envelope"]["r"] == "user:7"


def test_no_recovery_window_keeps_no_history() -> None:
    commands = Commands(BusNames(), recovery_window_s=0)
    args = publish_args(commands.publish([commands.event("x", {}, user=1)]))
    assert (args["maxlen"], args["lifetime"]) == (b"0", b"0")
    assert args["history"] == b"ngw:{user:1}:h"  # still the first key: the call's slot


def test_prefixes_reach_every_name() -> None:
    commands = Commands(BusNames("cp", "kp"))
    args = publish_args(commands.event("x", {}, room="classroom:1"))
    assert (args["history"], args["channel"]) == (b"kp:{classroom:1}:h", b"cp#/notifications#{classroom:1}#")
    assert unpack(commands.positions(["classroom:1"])[0].packed)[3:] == [b"kp:{classroom:1}:h"]
    rooms = unpack(commands.membership("join", 5, {"classroom:1": Position(1, 2)}).packed)
    assert rooms[3:6] == [b"kp:{user:5}:sessions", b"kp:{user:5}:s:", b"join"]
    assert rooms[7] == b"cp#/notifications#{user:5}#"
    kick = unpack(commands.kick(5).packed)
    assert kick[3:6] == [b"kp:{user:5}:sessions", b"kp:{user:5}:revoked", b"kp:{user:5}:s:"]
    assert kick[7] == b"cp#/notifications#{user:5}#"
    online, replicas = commands.is_online(5)
    assert unpack(online.packed)[3:] == [b"kp:{user:5}:on"]
    assert unpack(replicas.packed)[3:5] == [b"kp:{replicas}:live", b"kp:{replicas}:users"]


def test_positions_read_each_room_on_its_own_shard(commands: Commands) -> None:
    calls = commands.positions(["classroom:1", "quiz:9", "user:42"])
    assert [unpack(call.packed) for call in calls] == [
        [b"EVALSHA", POSITION.sha.encode(), b"1", f"ngw:{{{room}}}:h".encode()]
        for room in ("classroom:1", "quiz:9", "user:42")]
    with pytest.raises(InvalidRoom, match="hash tags"):
        commands.positions(["quiz:{9}"])


def test_rooms_are_checked_and_deduplicated_before_any_round_trip(commands: Commands) -> None:
    assert commands.rooms("join", 42, ["classroom:1", "classroom:2", "classroom:1"]) == (
        "42", ("classroom:1", "classroom:2"))
    assert commands.rooms("leave", "42", "quiz:9") == ("42", ("quiz:9",))
    with pytest.raises(ValueError, match="expected join or leave"):
        commands.rooms("kick", 42, "classroom:1")
    with pytest.raises(InvalidRoom, match="hash tags"):
        commands.rooms("join", "4{2}", "classroom:1")


def test_join_and_leave(commands: Commands) -> None:
    at = {"classroom:1": Position(1700000000000, 3), "classroom:2": Position(1700000000001, 18446744073709551615)}
    command = unpack(commands.membership("join", 42, at).packed)
    assert command[:9] == [
        b"EVALSHA", ROOMS.sha.encode(), b"1", b"ngw:{user:42}:sessions", b"ngw:{user:42}:s:", b"join",
        b"user:42", b"socket.io#/notifications#{user:42}#", command[8]]
    assert command[9:] == [b"classroom:1", b"1700000000000-3", b"classroom:2", b"1700000000001-18446744073709551615"]
    control = orjson.loads(command[8])
    assert {k: control[k] for k in ("v", "k", "u", "rooms")} == {
        "v": 2, "k": "join", "u": "42",
        "rooms": {"classroom:1": "1700000000000-3", "classroom:2": "1700000000001-18446744073709551615"}}
    assert "o" not in control  # control messages have no position
    leave = unpack(commands.membership("leave", "42", {"classroom:1": Position(5, 0)}).packed)
    assert leave[5] == b"leave"
    assert orjson.loads(leave[8])["rooms"] == {"classroom:1": "5-0"}


def test_membership_takes_positions_only(commands: Commands) -> None:
    with pytest.raises(TypeError, match="must be a Position"):
        commands.membership("join", 42, {"classroom:1": "1-2"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one room"):
        commands.membership("join", 42, {})


@pytest.mark.parametrize(("kind", "rooms", "words"), [
    ("join", [], "at least one room"),
    ("join", "admin:lobby", "only admin room"),
    ("join", ["quiz:9", "q" * 301], "the limit is 300"),
    ("join", ["user:43"], "belongs to another user"),
    ("join", ["teacher:43"], "belongs to another user"),
    ("join", ["*"], "everyone"),
    ("join", ["a{b}"], "hash tags"),
    ("leave", ["user:42"], "cannot be left"),
])
def test_membership_refusals(commands: Commands, kind: str, rooms: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        commands.rooms(kind, 42, rooms)
    if isinstance(rooms, list) and rooms:
        with pytest.raises(ValueError, match=words):
            commands.membership(kind, 42, dict.fromkeys(rooms, Position(1, 1)))


def test_own_rooms_and_shared_rooms_may_be_joined(commands: Commands) -> None:
    rooms = ["user:42", "teacher:42", "admin:all", "classroom:x"]
    assert commands.rooms("join", 42, rooms) == ("42", tuple(rooms))
    command = unpack(commands.membership("join", 42, dict.fromkeys(rooms, Position(9, 1))).packed)
    assert command[9::2] == [room.encode() for room in rooms]
    assert command[7] == b"socket.io#/notifications#{user:42}#"  # to the replicas holding the user
    assert list(orjson.loads(command[8])["rooms"]) == rooms


def test_every_call_of_a_user_is_in_the_users_slot(commands: Commands) -> None:
    """A join, a leave or a kick is one script on the user's shard: its keys and channel hash
    to the slot of `{user:<id>}`, as Redis Cluster requires of one script."""
    slot = key_slot("{user:auth0|5f7c}")
    join = unpack(commands.membership("join", "auth0|5f7c", {"quiz:9": Position(1, 1)}).packed)
    assert {key_slot(join[3]), key_slot(join[4] + b"pid"), key_slot(join[7])} == {slot}
    kick = unpack(commands.kick("auth0|5f7c").packed)
    assert {key_slot(kick[3]), key_slot(kick[4]), key_slot(kick[5] + b"pid"), key_slot(kick[7])} == {slot}


def test_kick(commands: Commands) -> None:
    command = unpack(commands.kick(42).packed)
    assert command[:8] == [
        b"EVALSHA", REVOKE.sha.encode(), b"2", b"ngw:{user:42}:sessions", b"ngw:{user:42}:revoked",
        b"ngw:{user:42}:s:", b"240000", b"socket.io#/notifications#{user:42}#"]
    control = orjson.loads(command[8])
    assert (control["v"], control["k"], control["u"]) == (2, "kick", "42")
    assert "rooms" not in control
    assert len(command) == 9


def test_presence(commands: Commands) -> None:
    online, replicas = commands.is_online(7)
    assert unpack(online.packed) == [b"EVALSHA", ONLINE.sha.encode(), b"1", b"ngw:{user:7}:on"]
    assert unpack(replicas.packed) == [
        b"EVALSHA", REPLICAS.sha.encode(), b"2", b"ngw:{replicas}:live", b"ngw:{replicas}:users", b"15000"]
    assert commands.online_count() == replicas


@pytest.mark.parametrize("options", [
    {"history_max_len": 0}, {"history_max_len": True}, {"history_max_len": 1.5},
    {"recovery_window_s": -1}, {"recovery_window_s": "120"}, {"recovery_window_s": 86401},
    {"max_payload_bytes": 1}, {"max_payload_bytes": None},
])
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Commands(BusNames(), **options)
