"""The room policy: the only door into a room."""

import pytest

from gateway.policy.rooms import Identity, may_join, may_leave, rooms_for


def test_rooms_for_each_role() -> None:
    assert rooms_for(Identity("1")) == ["user:1"]
    assert rooms_for(Identity("2", "teacher", ("7",))) == ["user:2", "teacher:2", "classroom:7"]
    assert rooms_for(Identity("3", "admin", ("7", "8"))) == ["user:3", "admin:all", "classroom:7", "classroom:8"]


@pytest.mark.parametrize(("identity", "room", "allowed"), [
    (Identity("1"), "user:1", True),
    (Identity("1"), "user:2", False),
    (Identity("1"), "classroom:9", True),
    (Identity("1"), "teacher:1", False),
    (Identity("1", "teacher"), "teacher:1", True),
    (Identity("1", "teacher"), "teacher:2", False),
    (Identity("1"), "admin:all", False),
    (Identity("1", "admin"), "admin:all", True),
    (Identity("1", "teacher"), "admin:all", False),
    (Identity("1", "admin"), "admin:root", False),
    (Identity("1", "admin"), "user:2", False),
    (Identity("1", "admin"), "teacher:1", False),
    # rooms of no reserved kind: a producer may put anyone in them
    (Identity("1"), "quiz:9", True),
    (Identity("1"), "lobby", True),
    (Identity("1"), "User:2", True),
    (Identity("1"), "q" * 300, True),
    # outside the grammar: never
    (Identity("1"), "classroom:", False),
    (Identity("1"), "classroom:a\tb", False),
    (Identity("1"), "quiz:9\n", False),
    (Identity("1"), "q" * 301, False),
    (Identity("1"), "", False),
])
def test_may_join(identity: Identity, room: str, allowed: bool) -> None:
    assert may_join(identity, room) is allowed


def test_own_user_room_cannot_be_left() -> None:
    assert not may_leave(Identity("1"), "user:1")
    assert may_leave(Identity("1"), "classroom:1")
