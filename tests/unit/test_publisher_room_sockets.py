"""`Commands.scoped` and `Commands.room_control`: the calls behind `emit_rooms`, `sockets_join`,
`sockets_leave` and `disconnect_room`, checked before anything is sent."""

from __future__ import annotations

import orjson
import pytest

from publisher.commands import Commands
from publisher.envelope import BusNames, Position
from publisher.scripts import CONTROL, PUBLISH


def test_an_event_for_several_rooms_is_one_copy_per_room_naming_all_of_them() -> None:
    commands = Commands(BusNames())
    emits = commands.scoped("news", {"a": 1}, ["b", "a", "b"], ["c"])
    assert [emit.key for emit in emits] == ["ngw:{a}:h", "ngw:{b}:h"]
    for emit, room in zip(emits, ["a", "b"], strict=True):
        envelope = orjson.loads(emit.envelope)
        assert (envelope["r"], envelope["rs"], envelope["x"]) == (room, ["a", "b"], ["c"])
    assert commands.publish(emits).script is PUBLISH  # one call carries both copies


def test_everyone_but_some_rooms_and_one_room_without_except() -> None:
    (emit,) = Commands(BusNames()).scoped("news", 1, None, ["c"])
    envelope = orjson.loads(emit.envelope)
    assert (envelope["r"], envelope["x"], "rs" in envelope) == (None, ["c"], False)
    (emit,) = Commands(BusNames()).scoped("news", 1, ["a"])
    assert b'"rs"' not in emit.envelope
    assert b'"x"' not in emit.envelope


@pytest.mark.parametrize(("rooms", "excluded"), [([], ()), (["{a}"], ()), (["a"], ["user:"]),
                                                  ([f"r{i}" for i in range(101)], ())])
def test_bad_scopes_are_refused_before_sending(rooms: list[str], excluded: list[str]) -> None:
    with pytest.raises(ValueError):  # InvalidRoom or ValueError, both name the problem
        Commands(BusNames()).scoped("news", 1, rooms, excluded)


def test_room_controls_go_to_the_rooms_channel() -> None:
    commands = Commands(BusNames("io", "k"))
    call = commands.room_control("rjoin", "classroom:7", {"quiz:9": Position(5, 1)}, ["user:2"])
    assert call.script is CONTROL
    assert call.args[:3] == (1, "k:{classroom:7}:h", "io#/notifications#{classroom:7}#")
    assert orjson.loads(call.args[3]) == {  # type: ignore[arg-type]
        "v": 2, "k": "rjoin", "t": orjson.loads(call.args[3])["t"], "r": "classroom:7",  # type: ignore[arg-type]
        "x": ["user:2"], "rooms": {"quiz:9": "5-1"}}
    everyone = commands.room_control("rkick", None, None)
    assert everyone.args[1:3] == ("k:{*}:h", "io#/notifications#{*}#")
    with pytest.raises(ValueError, match="at least one room"):
        commands.room_control("rleave", "a", {})
    with pytest.raises(ValueError, match="unknown room control"):
        commands.room_control("join", "a", {"b": Position(1, 0)})
    with pytest.raises(TypeError):
        commands.room_control("rjoin", "a", {"b": "1-0"})  # type: ignore[dict-item]
