"""publisher.commands: what each publisher call sends, checked without Redis."""

from __future__ import annotations

from typing import Any

import hiredis
import orjson
import pytest

from publisher.commands import Call, Commands, Message, pack
from publisher.envelope import BusNames
from publisher.errors import InvalidEvent, InvalidPayload, InvalidRoom
from publisher.scripts import PRESENCE, PUBLISH, REVOKE, ROOMS


def unpack(packed: bytes) -> list[Any]:
    """Read back a RESP command as Redis would."""
    reader = hiredis.Reader()
    reader.feed(packed)
    command = reader.gets()
    assert reader.gets() is False, "exactly one command"
    return command  # type: ignore[no-any-return]


def publish_args(call: Call) -> dict[str, Any]:
    command = unpack(call.packed)
    assert command[:3] == [b"EVALSHA", PUBLISH.sha.encode(), b"2"]
    clock, history, channel, envelope, epoch, maxlen, window = command[3:]
    return {"clock": clock, "history": history, "channel": channel,
            "envelope": orjson.loads(envelope), "raw": envelope, "epoch": epoch,
            "maxlen": maxlen, "window": window}


@pytest.fixture
def commands() -> Commands:
    return Commands(BusNames(), history_max_len=1000, recovery_window_s=120)


def test_pack_is_resp() -> None:
    assert pack(("SET", "k", 1, b"\x00v")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$2\r\n\x00v\r\n"
    assert unpack(pack(("GET", "ü"))) == [b"GET", "ü".encode()]


def test_event_to_a_room(commands: Commands) -> None:
    data = {"amount": 50, "reason": "quiz", "newBalance": 1250}
    args = publish_args(commands.event("coins:earned", data, room="user:42"))
    assert args["clock"] == b"ngw:clock"
    assert args["history"] == b"ngw:h:user:42"
    assert args["channel"] == b"socket.io#/notifications#user:42#"
    assert args["raw"].endswith(b"}")
    assert b'"o"' not in args["raw"]
    envelope = args["envelope"]
    assert {k: envelope[k] for k in ("v", "k", "ev", "d", "r")} == {
        "v": 1, "k": "e", "ev": "coins:earned", "d": data, "r": "user:42"}
    assert isinstance(envelope["t"], float)
    assert (args["maxlen"], args["window"]) == (b"1000", b"120000")
    assert len(args["epoch"]) == 16


def test_event_to_a_user_and_to_everyone(commands: Commands) -> None:
    to_user = publish_args(commands.event("x", {}, user=42))
    assert to_user["channel"] == b"socket.io#/notifications#user:42#"
    assert to_user["envelope"]["r"] == "user:42"
    everyone = publish_args(commands.event("x", {}, broadcast=True))
    assert everyone["channel"] == b"socket.io#/notifications#"
    assert everyone["history"] == b"ngw:hb"  # broadcasts are replayed on recovery too
    assert everyone["envelope"]["r"] is None


def test_every_call_gets_a_fresh_epoch_candidate(commands: Commands) -> None:
    epochs = {publish_args(commands.event("x", {}, user=1))["epoch"] for _ in range(50)}
    assert len(epochs) == 50


def test_eval_fallback_carries_the_same_arguments(commands: Commands) -> None:
    call = commands.event("x", {"a": 1}, room="classroom:7")
    sha, fallback = unpack(call.packed), unpack(call.eval_packed())
    assert fallback[0] == b"EVAL"
    assert fallback[1] == PUBLISH.source
    assert fallback[2:] == sha[2:]


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
    assert args["channel"] == f"socket.io#/notifications#{room}#".encode()
    assert args["history"] == f"ngw:h:{room}".encode()
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
    assert publish_args(commands.event("x", {}, user=1))["history"] == b""


def test_prefixes_reach_every_name() -> None:
    commands = Commands(BusNames("cp", "kp"))
    args = publish_args(commands.event("x", {}, room="classroom:1"))
    assert (args["clock"], args["history"], args["channel"]) == (
        b"kp:clock", b"kp:h:classroom:1", b"cp#/notifications#classroom:1#")
    sessions, publish = commands.membership("join", 5, "classroom:1")
    assert unpack(sessions.packed)[3:6] == [b"kp:sessions:5", b"kp:clock", b"kp:s:"]
    assert publish_args(publish)["channel"] == b"cp#/notifications#user:5#"


def test_join_and_leave(commands: Commands) -> None:
    sessions, publish = commands.membership("join", 42, ["classroom:1", "classroom:2",
                                                         "classroom:1"])
    assert unpack(sessions.packed) == [
        b"EVALSHA", ROOMS.sha.encode(), b"2", b"ngw:sessions:42", b"ngw:clock", b"ngw:s:", b"join", b"user:42",
        b"classroom:1", b"classroom:2"]
    args = publish_args(publish)
    assert args["history"] == b""
    assert args["channel"] == b"socket.io#/notifications#user:42#"
    assert {k: args["envelope"][k] for k in ("v", "k", "u", "rooms")} == {
        "v": 1, "k": "join", "u": "42", "rooms": ["classroom:1", "classroom:2"]}
    _, leave = commands.membership("leave", "42", "classroom:1")
    assert publish_args(leave)["envelope"]["rooms"] == ["classroom:1"]


@pytest.mark.parametrize(("kind", "rooms", "words"), [
    ("join", [], "at least one room"),
    ("join", "admin:lobby", "only admin room"),
    ("join", ["quiz:9", "q" * 301], "the limit is 300"),
    ("join", ["user:43"], "belongs to another user"),
    ("join", ["teacher:43"], "belongs to another user"),
    ("leave", ["user:42"], "cannot be left"),
])
def test_membership_refusals(commands: Commands, kind: str, rooms: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        commands.membership(kind, 42, rooms)


def test_own_rooms_and_shared_rooms_may_be_joined(commands: Commands) -> None:
    rooms = ["user:42", "teacher:42", "admin:all", "classroom:x"]
    sessions, publish = commands.membership("join", 42, rooms)
    assert unpack(sessions.packed)[-len(rooms):] == [room.encode() for room in rooms]
    args = publish_args(publish)
    assert args["channel"] == b"socket.io#/notifications#user:42#"  # to the replicas holding the user
    assert args["history"] == b""  # a control message: nothing to replay
    assert {k: args["envelope"][k] for k in ("v", "k", "u", "rooms")} == {
        "v": 1, "k": "join", "u": "42", "rooms": rooms}


def test_a_producer_may_join_a_user_to_any_other_room(commands: Commands) -> None:
    sessions, publish = commands.membership("join", "3", "quiz:9")
    assert unpack(sessions.packed)[-2:] == [b"user:3", b"quiz:9"]
    assert publish_args(publish)["envelope"]["rooms"] == ["quiz:9"]
    _, publish = commands.membership("leave", "3", ["quiz:9", "lobby"])
    assert publish_args(publish)["envelope"]["rooms"] == ["quiz:9", "lobby"]


def test_kick(commands: Commands) -> None:
    revoke, publish = commands.kick(42)
    assert unpack(revoke.packed) == [
        b"EVALSHA", REVOKE.sha.encode(), b"2", b"ngw:sessions:42", b"ngw:revoked:42", b"ngw:s:",
        b"240000"]
    args = publish_args(publish)
    assert args["history"] == b""
    assert args["channel"] == b"socket.io#/notifications#user:42#"
    assert args["envelope"]["k"] == "kick"
    assert "rooms" not in args["envelope"]


def test_presence(commands: Commands) -> None:
    assert unpack(commands.is_online(7).packed) == [
        b"EVALSHA", PRESENCE.sha.encode(), b"1", b"ngw:replicas", b"ngw:online:", b"online",
        b"7", b"15000"]
    assert unpack(commands.online_count().packed)[5] == b"count"


@pytest.mark.parametrize("options", [
    {"history_max_len": 0}, {"history_max_len": True}, {"history_max_len": 1.5},
    {"recovery_window_s": -1}, {"recovery_window_s": "120"}, {"recovery_window_s": 86401},
    {"max_payload_bytes": 1}, {"max_payload_bytes": None},
])
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Commands(BusNames(), **options)
