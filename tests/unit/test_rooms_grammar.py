"""publisher.rooms: the room grammar both producers and the gateway rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from publisher.rooms import (
    ADMIN_ROOM,
    OTHER,
    InvalidRoom,
    check_room,
    classroom_room,
    normalize_user_id,
    parse_room,
    teacher_room,
    user_room,
)

ID_ALPHABET = "ABCXYZabcxyz0189_-.@"


@pytest.mark.parametrize(("name", "expected"), [
    ("user:42", ("user", "42")),
    ("classroom:math-7.b", ("classroom", "math-7.b")),
    ("teacher:t_1@school.org", ("teacher", "t_1@school.org")),
    ("admin:all", ("admin", "all")),
    ("user:" + "x" * 256, ("user", "x" * 256)),
    # any other name is a room of no reserved kind: the kind is OTHER, the id the whole name
    ("quiz:9", (OTHER, "quiz:9")),
    ("lobby", (OTHER, "lobby")),
    ("user", (OTHER, "user")),
    ("User:1", (OTHER, "User:1")),
    ("guest:", (OTHER, "guest:")),
    (":", (OTHER, ":")),
    ("school 12 / group #3", (OTHER, "school 12 / group #3")),
    ("ÉCOLE:é", (OTHER, "ÉCOLE:é")),
    ("q" * 300, (OTHER, "q" * 300)),
])
def test_parse_room_accepts_the_grammar(name: str, expected: tuple[str, str]) -> None:
    assert parse_room(name) == expected
    assert check_room(name) == name


@pytest.mark.parametrize(("name", "words"), [
    ("user:", "needs an id"),
    ("teacher:", "needs an id"),
    ("", "1 to 300 characters"),
    ("admin:root", "only admin room"),
    ("admin:", "only admin room"),
    ("user:a\tb", "character '\\t'"),
    ("user:1\x7f", "character '\\x7f'"),
    ("user:1\n", "character '\\n'"),
    ("user:" + "x" * 257, "257 characters, the limit is 256"),
    ("quiz:" + "x" * 296, "301 characters, the limit is 300"),
    ("quiz:9\n", "character '\\n'"),
    ("lobby\x00", "character '\\x00'"),
    ("lobby\x85", "character '\\x85'"),
    ("lobby\ud800", "character '\\ud800'"),
    # every bus name of a room carries the room as its hash tag: a brace would change the slot
    ("lobby{1}", "character '{'; braces are Redis Cluster hash tags"),
    ("a}b", "character '}'; braces are Redis Cluster hash tags"),
    ("user:{42}", "character '{'"),
    ("classroom:7}", "character '}'"),
    ("*", "the bus's name for everyone"),
])
def test_parse_room_names_the_problem(name: str, words: str) -> None:
    with pytest.raises(InvalidRoom) as info:
        parse_room(name)
    assert words in str(info.value)


def test_a_long_bad_name_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidRoom) as info:
        parse_room("x" * 250 + "\n")
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("value", [None, 42, b"user:1", ["user:1"]])
def test_parse_room_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidRoom, match="a room name is a string"):
        parse_room(value)


def test_invalid_room_is_a_value_error() -> None:
    assert issubclass(InvalidRoom, ValueError)


def test_builders() -> None:
    assert user_room(42) == "user:42"
    assert user_room("42") == "user:42"
    assert user_room(-7) == "user:-7"
    assert classroom_room(7) == "classroom:7"
    assert classroom_room("math") == "classroom:math"
    assert teacher_room("t1") == "teacher:t1"
    assert ADMIN_ROOM == "admin:all"


@pytest.mark.parametrize("builder", [user_room, classroom_room, teacher_room])
def test_builders_refuse_ids_outside_the_grammar(builder: object) -> None:
    with pytest.raises(ValueError, match="character '\\\\t'"):
        builder("a\tb")  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"character '\{'"):
        builder("{a}")  # type: ignore[operator]
    with pytest.raises(ValueError, match="257 characters"):
        builder("x" * 257)  # type: ignore[operator]


@pytest.mark.parametrize("user", ["auth0|5f7c8ec7c33c6c004bbafe82", "jane+tag@example.com", "a/b:c#d", "é"])
def test_ids_from_identity_providers_are_rooms(user: str) -> None:
    assert parse_room(user_room(user)) == ("user", user)


@pytest.mark.parametrize(("value", "expected"), [("42", "42"), (42, "42"), (0, "0"), ("a b", "a b")])
def test_normalize_user_id(value: object, expected: str) -> None:
    assert normalize_user_id(value) == expected


@pytest.mark.parametrize("value", [True, False, 4.2, 42.0, None, "", [1], {"id": 1}, b"42"])
def test_normalize_user_id_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="non-empty string or an integer"):
        normalize_user_id(value)


@given(st.sampled_from(["user", "classroom", "teacher"]),
       st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_every_grammatical_name_parses_back(kind: str, room_id: str) -> None:
    assert parse_room(f"{kind}:{room_id}") == (kind, room_id)


@given(st.text(max_size=320))
def test_parse_room_raises_only_invalid_room(name: str) -> None:
    try:
        kind, room_id = parse_room(name)
    except InvalidRoom:
        return
    assert 1 <= len(name) <= 300
    if kind == OTHER:
        assert room_id == name
        assert name.partition(":")[0] not in ("user", "classroom", "teacher", "admin") or ":" not in name
    else:
        assert f"{kind}:{room_id}" == name


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="{}"),
               min_size=1, max_size=300))
def test_every_name_without_control_characters_is_a_room_or_a_reserved_one(name: str) -> None:
    """Producers may name rooms freely; only the reserved prefixes have a grammar of their own
    (and `*`, the bus's "everyone", is no room)."""
    kind, sep, _ = name.partition(":")
    if (sep and kind in ("user", "classroom", "teacher", "admin")) or name == "*":
        return
    assert parse_room(name) == (OTHER, name)
