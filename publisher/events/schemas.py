"""The five events of the contract: their typed payloads, their schemas as data, and the check.

`EVENT_SCHEMAS` describes the payloads of the five contract events as data, so that the
runtime check (`validate`) and the TypeScript declarations for the frontend
(`typescript_declarations`) come from one description and cannot drift apart.
The `TypedDict`s (`CoinsEarned`...) are what a producer types against; `typescript` writes
the TypeScript.

Apart from sanitising (`sanitize`): that applies to every payload of every event on every emit,
while a payload is checked against its schema only on request (`strict`), for these five.
"""

# No `from __future__ import annotations` here: TypedDict needs its annotations evaluated to
# tell NotRequired keys from required ones at run time (`__required_keys__`).
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NotRequired, TypedDict

from publisher.events.sanitize import InvalidPayload, _show

__all__ = [
    "EVENT_SCHEMAS",
    "AchievementUnlocked",
    "CoinsEarned",
    "EventSchema",
    "FieldSpec",
    "FieldType",
    "NotificationNew",
    "NotificationRead",
    "ObjectSchema",
    "Rank",
    "RankPromoted",
    "validate",
]


class AchievementUnlocked(TypedDict):
    achievementId: str
    name: str
    description: str
    icon: str
    xpReward: int


class Rank(TypedDict):
    name: str
    level: int


class RankPromoted(TypedDict):
    oldRank: Rank
    newRank: Rank
    xpRequired: int


class CoinsEarned(TypedDict):
    amount: int
    reason: str
    newBalance: int


class NotificationNew(TypedDict):
    id: str
    userId: str
    type: str
    title: str
    message: str
    data: NotRequired[dict[str, Any]]
    read: bool
    createdAt: str


class NotificationRead(TypedDict):
    notificationId: str
    readAt: str


FieldType = Literal["string", "integer", "boolean", "datetime", "object"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload field. `object` with `nested` is a known shape, without it any JSON object.

    `datetime` is an ISO 8601 string (JavaScript's `toISOString()`), not a Date.
    """

    name: str
    type: FieldType
    optional: bool = False
    nested: "ObjectSchema | None" = None
    doc: str = ""


@dataclass(frozen=True, slots=True)
class ObjectSchema:
    interface: str  # the TypeScript interface's name
    fields: tuple[FieldSpec, ...]
    doc: str = ""


@dataclass(frozen=True, slots=True)
class EventSchema:
    event: str
    payload: ObjectSchema

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        return self.payload.fields


_RANK = ObjectSchema("Rank", (FieldSpec("name", "string"), FieldSpec("level", "integer")))

EVENT_SCHEMAS: Final[Mapping[str, EventSchema]] = MappingProxyType({
    schema.event: schema
    for schema in (
        EventSchema("achievement:unlocked", ObjectSchema("AchievementUnlocked", (
            FieldSpec("achievementId", "string"),
            FieldSpec("name", "string"),
            FieldSpec("description", "string"),
            FieldSpec("icon", "string"),
            FieldSpec("xpReward", "integer"),
        ), "The user unlocked an achievement.")),
        EventSchema("rank:promoted", ObjectSchema("RankPromoted", (
            FieldSpec("oldRank", "object", nested=_RANK),
            FieldSpec("newRank", "object", nested=_RANK),
            FieldSpec("xpRequired", "integer"),
        ), "The user moved up a rank.")),
        EventSchema("coins:earned", ObjectSchema("CoinsEarned", (
            FieldSpec("amount", "integer"),
            FieldSpec("reason", "string"),
            FieldSpec("newBalance", "integer"),
        ), "Coins were credited to the user.")),
        EventSchema("notification:new", ObjectSchema("NotificationNew", (
            FieldSpec("id", "string"),
            FieldSpec("userId", "string"),
            FieldSpec("type", "string"),
            FieldSpec("title", "string"),
            FieldSpec("message", "string"),
            FieldSpec("data", "object", optional=True, doc="Free-form details."),
            FieldSpec("read", "boolean"),
            FieldSpec("createdAt", "datetime"),
        ), "A new notification for the user.")),
        EventSchema("notification:read", ObjectSchema("NotificationRead", (
            FieldSpec("notificationId", "string"),
            FieldSpec("readAt", "datetime"),
        ), "A notification was marked read (e.g. on another device).")),
    )
})

_TYPE_WORDS: Final = {
    "string": "a string", "integer": "an integer", "boolean": "true or false",
    "datetime": "an ISO 8601 date-time string", "object": "an object",
}


def _field_problem(spec: FieldSpec, value: Any, where: str) -> str | None:
    kind = spec.type
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "datetime":
        ok = isinstance(value, str) and _is_iso_datetime(value)
    elif not isinstance(value, dict):
        ok = False
    elif spec.nested is None:
        return None
    else:
        return _object_problem(spec.nested, value, f"{where}.")
    if ok:
        return None
    return f"{where} must be {_TYPE_WORDS[kind]}, got {_show(value)}"


def _is_iso_datetime(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _object_problem(schema: ObjectSchema, value: Mapping[str, Any], prefix: str) -> str | None:
    for spec in schema.fields:
        where = prefix + spec.name
        if spec.name not in value:
            if spec.optional:
                continue
            return f"{where} is required"
        problem = _field_problem(spec, value[spec.name], where)
        if problem:
            return problem
    return None


def validate(event: str, data: Any) -> None:
    """Check a payload against its event's schema; events without one pass unchecked.

    Raises InvalidPayload (a ValueError) naming the event and the field, e.g.
    `coins:earned: newBalance must be an integer, got '12'`. Extra keys are allowed: they pass
    through to the client.
    """
    schema = EVENT_SCHEMAS.get(event)
    if schema is None:
        return
    if not isinstance(data, dict):
        raise InvalidPayload(f"{event}: the payload must be an object, got {_show(data)}")
    problem = _object_problem(schema.payload, data, "")
    if problem:
        raise InvalidPayload(f"{event}: {problem}")
