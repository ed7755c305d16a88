"""publisher.events: event names, payload sanitising, the contract's schemas and their TypeScript."""

from __future__ import annotations

import collections
import enum
import math
import re
from datetime import datetime
from typing import Any, get_type_hints

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from publisher import events
from publisher.events import (
    EVENT_SCHEMAS,
    MAX_SAFE_INTEGER,
    InvalidEvent,
    InvalidPayload,
    check_event_name,
    sanitize,
    typescript_declarations,
    validate,
)

CONTRACT_EVENTS = {"notification:new", "notification:read", "achievement:unlocked",
                   "rank:promoted", "coins:earned"}

VALID = {
    "achievement:unlocked": {"achievementId": "a1", "name": "First steps", "description": "d",
                             "icon": "star.png", "xpReward": 100},
    "rank:promoted": {"oldRank": {"name": "Bronze", "level": 1},
                      "newRank": {"name": "Silver", "level": 2}, "xpRequired": 500},
    "coins:earned": {"amount": 50, "reason": "exercise_completed", "newBalance": 1250},
    "notification:new": {"id": "n1", "userId": "42", "type": "info", "title": "Hi",
                         "message": "Hello", "data": {"link": "/x"}, "read": False,
                         "createdAt": "2024-05-01T12:00:00.000Z"},
    "notification:read": {"notificationId": "n1", "readAt": "2024-05-01T12:00:00+02:00"},
}


# -- event names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["coins:earned", "a", "x" * 64, "A-z_0.9:b", *CONTRACT_EVENTS])
def test_event_names_accepted(name: str) -> None:
    assert check_event_name(name) == name


@pytest.mark.parametrize(("name", "words"), [
    ("", "not an event name"), ("x" * 65, "not an event name"), ("a b", "not an event name"),
    ("é", "not an event name"), ("a/b", "not an event name"), ("a\n", "not an event name"),
    ("connect", "reserved"), ("connect_error", "reserved"), ("disconnect", "reserved"),
    ("disconnecting", "reserved"), ("newListener", "reserved"), ("removeListener", "reserved"),
    (5, "is a string"), (None, "is a string"),
])
def test_event_names_refused(name: object, words: str) -> None:
    with pytest.raises(InvalidEvent, match=words):
        check_event_name(name)
    assert issubclass(InvalidEvent, ValueError)


# -- sanitize ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    None, True, 0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 1.5, -0.0, "", "tab\tnl\ncr\r",
    "ünïcödé ✓ 🎉", [], {}, {"a": [1, {"b": None}]}, *VALID.values(),
])
def test_sanitize_returns_compact_json(data: Any) -> None:
    body = sanitize(data)
    assert body == orjson.dumps(data)
    assert orjson.loads(body) == data


@pytest.mark.parametrize(("data", "message"), [
    ({"oldRank": {"level": 2**53}}, "data.oldRank.level: integer 9007199254740992 is beyond"),
    ({"a": [1, -(2**53)]}, "data.a[1]: integer -9007199254740992 is beyond"),
    ({"a": {"b": [0, {"c": math.nan}]}}, "data.a.b[1].c: nan has no JSON form"),
    ({"x": math.inf}, "data.x: inf has no JSON form"),
    ({"x": "a\x00b"}, "data.x: control character U+0000"),
    ({"x": ["ok", "bell\x07"]}, "data.x[1]: control character U+0007"),
    ({"x": "del\x7f"}, "data.x: control character U+007F"),
    ({"x": "esc\x1b[31m"}, "data.x: control character U+001B"),
    ({"x": "\ud800"}, "data.x: lone surrogate U+D800"),
    ({"a\x01": 1}, "data['a\\x01']: key: control character U+0001"),
    ({1: "x"}, "data: key 1 is of type int, not str"),
    ({"a": {(1, 2): 0}}, "data.a: key (1, 2) is of type tuple, not str"),
    ({"t": (1, 2)}, "data.t: a tuple is not a JSON type"),
    ({"s": {1}}, "data.s: a set is not a JSON type"),
    ({"b": b"x"}, "data.b: a bytes is not a JSON type"),
    ({"d": datetime(2024, 1, 1)}, "data.d: a datetime is not a JSON type"),
    ({"my key": {"ok": object()}}, "data['my key'].ok: a object is not a JSON type"),
    ("\x00", "data: control character U+0000"),
    (2**60, "data: integer"),
])
def test_sanitize_names_the_bad_field(data: Any, message: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        sanitize(data)
    assert str(info.value).startswith(message), str(info.value)


def test_depth_limit() -> None:
    data: Any = 1
    for _ in range(32):
        data = [data]
    sanitize(data)
    with pytest.raises(InvalidPayload, match="nested deeper than 32"):
        sanitize([data])
    with pytest.raises(InvalidPayload, match="nested deeper than 32"):
        sanitize({"a": [data]})


def test_cycles_are_caught_by_the_depth_limit() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidPayload, match="nested deeper"):
        sanitize(loop)


def test_size_limit() -> None:
    data = {"s": "x" * 100}
    size = len(orjson.dumps(data))
    assert sanitize(data, max_bytes=size)
    with pytest.raises(InvalidPayload, match=f"data: the encoded payload is {size} bytes, over "
                                             f"the limit of {size - 1}"):
        sanitize(data, max_bytes=size - 1)
    with pytest.raises(InvalidPayload, match="over the limit of 65536"):
        sanitize("x" * 65536)


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    TOP = 3


def test_subclasses_of_json_types_pass_as_their_base() -> None:
    data = {"c": Color.RED, "l": Level.TOP, "o": collections.OrderedDict(a=1),
            "d": collections.defaultdict(list, b=[1]), "u": collections.UserList([1])}
    with pytest.raises(InvalidPayload, match=r"data.u: a UserList is not a JSON type"):
        sanitize(data)
    del data["u"]
    assert orjson.loads(sanitize(data)) == {"c": "red", "l": 3, "o": {"a": 1}, "d": {"b": [1]}}


def test_invalid_payload_is_a_value_error() -> None:
    assert issubclass(InvalidPayload, ValueError)


PAYLOADS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.binary(max_size=3) | st.tuples(st.integers()) | st.datetimes(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4),
    max_leaves=20,
)


@given(PAYLOADS)
def test_sanitize_returns_json_that_loads_back_equal_or_raises_invalid_payload(data: Any) -> None:
    try:
        body = sanitize(data)
    except InvalidPayload as exc:
        message = str(exc)
    else:
        assert orjson.loads(body) == data
        return
    assert message.startswith("data")


# -- schemas and validate ------------------------------------------------------------------------

def test_the_five_contract_events_have_schemas() -> None:
    assert set(EVENT_SCHEMAS) == CONTRACT_EVENTS
    for event, schema in EVENT_SCHEMAS.items():
        assert schema.event == event
        assert schema.fields == schema.payload.fields


@pytest.mark.parametrize(("event", "typed"), [
    ("achievement:unlocked", events.AchievementUnlocked), ("rank:promoted", events.RankPromoted),
    ("coins:earned", events.CoinsEarned), ("notification:new", events.NotificationNew),
    ("notification:read", events.NotificationRead),
])
def test_typed_dicts_and_schemas_agree(event: str, typed: type) -> None:
    fields = EVENT_SCHEMAS[event].fields
    assert [f.name for f in fields] == list(get_type_hints(typed))
    assert {f.name for f in fields if not f.optional} == typed.__required_keys__  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", sorted(VALID))
def test_valid_payloads_pass(event: str) -> None:
    validate(event, VALID[event])
    validate(event, {**VALID[event], "extra": {"anything": [1]}})


def test_optional_data_may_be_absent() -> None:
    payload = {k: v for k, v in VALID["notification:new"].items() if k != "data"}
    validate("notification:new", payload)


def test_events_without_a_schema_pass_unchecked() -> None:
    validate("custom:thing", [1, 2, 3])
    validate("custom:thing", "text")


def _changed(event: str, path: str, value: Any) -> dict[str, Any]:
    payload = orjson.loads(orjson.dumps(VALID[event]))
    *parents, last = path.split(".")
    target = payload
    for part in parents:
        target = target[part]
    if value is _MISSING:
        del target[last]
    else:
        target[last] = value
    return payload


_MISSING = object()


@pytest.mark.parametrize(("event", "path", "value", "message"), [
    ("coins:earned", "newBalance", "12", "coins:earned: newBalance must be an integer, got '12'"),
    ("coins:earned", "amount", 1.5, "coins:earned: amount must be an integer, got 1.5"),
    ("coins:earned", "amount", True, "coins:earned: amount must be an integer, got True"),
    ("coins:earned", "reason", None, "coins:earned: reason must be a string, got None"),
    ("coins:earned", "reason", _MISSING, "coins:earned: reason is required"),
    ("achievement:unlocked", "xpReward", "100", "achievement:unlocked: xpReward must be an integer"),
    ("achievement:unlocked", "icon", 3, "achievement:unlocked: icon must be a string, got 3"),
    ("achievement:unlocked", "achievementId", _MISSING,
     "achievement:unlocked: achievementId is required"),
    ("rank:promoted", "oldRank.level", "3", "rank:promoted: oldRank.level must be an integer"),
    ("rank:promoted", "newRank.name", 2, "rank:promoted: newRank.name must be a string, got 2"),
    ("rank:promoted", "newRank", "Silver", "rank:promoted: newRank must be an object"),
    ("rank:promoted", "oldRank.name", _MISSING, "rank:promoted: oldRank.name is required"),
    ("rank:promoted", "xpRequired", None, "rank:promoted: xpRequired must be an integer"),
    ("notification:new", "read", "false", "notification:new: read must be true or false"),
    ("notification:new", "read", 0, "notification:new: read must be true or false, got 0"),
    ("notification:new", "createdAt", "yesterday",
     "notification:new: createdAt must be an ISO 8601 date-time string, got 'yesterday'"),
    ("notification:new", "createdAt", 1714564800000, "notification:new: createdAt must be an ISO"),
    ("notification:new", "data", [1], "notification:new: data must be an object, got [1]"),
    ("notification:new", "data", None, "notification:new: data must be an object, got None"),
    ("notification:new", "userId", 42, "notification:new: userId must be a string, got 42"),
    ("notification:new", "id", _MISSING, "notification:new: id is required"),
    ("notification:read", "readAt", "2024-13-01", "notification:read: readAt must be an ISO"),
    ("notification:read", "notificationId", _MISSING,
     "notification:read: notificationId is required"),
])
def test_each_field_error_names_the_field(event: str, path: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        validate(event, _changed(event, path, value))
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data", [None, [1], "x", 5])
def test_contract_payloads_must_be_objects(data: Any) -> None:
    with pytest.raises(InvalidPayload, match="coins:earned: the payload must be an object"):
        validate("coins:earned", data)


# -- TypeScript ----------------------------------------------------------------------------------

def test_typescript_declarations_cover_every_schema() -> None:
    text = typescript_declarations()
    assert "export interface ServerToClientEvents {" in text
    for event, schema in EVENT_SCHEMAS.items():
        interface = schema.payload.interface
        assert f'  "{event}": (data: {interface}, offset?: string) => void;' in text
        body = re.search(rf"export interface {interface} \{{\n(.*?)\n\}}", text, re.DOTALL)
        assert body, interface
        for field in schema.fields:
            assert re.search(rf"^  {field.name}{'[?]' if field.optional else ''}: ", body.group(1),
                             re.MULTILINE), (interface, field.name)
    assert text.count("export interface Rank {") == 1
    assert "  oldRank: Rank;" in text
    assert "  xpReward: number;" in text
    assert "  read: boolean;" in text
    assert "  data?: Record<string, unknown>;" in text
    assert "  createdAt: string;" in text


def test_typescript_refuses_two_shapes_with_one_name() -> None:
    a = events.ObjectSchema("Same", (events.FieldSpec("a", "string"),))
    b = events.ObjectSchema("Same", (events.FieldSpec("b", "string"),))
    schemas = {"x": events.EventSchema("x", a), "y": events.EventSchema("y", b)}
    with pytest.raises(ValueError, match="Same"):
        typescript_declarations(schemas)
