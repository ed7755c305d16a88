"""Event names and payloads: what may travel to a browser, and the five events of the contract.

A payload is *sanitised* (what `sanitize` checks, in this order) when:

- it is built only of JSON types: `dict` with `str` keys, `list`, `str`, `int`, `float`,
  `bool`, `None` (subclasses of `dict`, `list`, `str`, `int` are taken as their base; tuples,
  sets, bytes, dates, Decimals, UUIDs, dataclasses... are refused: convert them first, so the
  browser sees what you meant and not orjson's choice);
- every `int` is a JavaScript safe integer, strictly within ±2**53, and every `float` is finite
  (NaN and infinities have no JSON form);
- containers are nested at most 32 deep (the payload itself is level 1), which also catches
  cycles;
- no string and no key holds a control character (U+0000 to U+001F except tab, line feed and
  carriage return, nor U+007F) or a lone surrogate: those break log lines and terminals
  downstream, and surrogates cannot be encoded as UTF-8;
- its compact JSON encoding is at most `max_bytes` (64 KiB by default, the protocol's limit).

Any failure raises `InvalidPayload` whose message starts with the path of the offending value,
e.g. `data.oldRank.level: ...` or `data.items[3]: ...`.

`EVENT_SCHEMAS` describes the payloads of the five contract events as data, so that the
runtime check (`validate`) and the TypeScript declarations for the frontend
(`typescript_declarations`) come from one description and cannot drift apart.
"""

# No `from __future__ import annotations` here: TypedDict needs its annotations evaluated to
# tell NotRequired keys from required ones at run time (`__required_keys__`).
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NotRequired, TypedDict

import orjson

MAX_PAYLOAD_BYTES: Final = 65_536
MAX_DEPTH: Final = 32
MAX_SAFE_INTEGER: Final = 2**53 - 1

EVENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


class InvalidEvent(ValueError):
    """An event name outside the grammar, or one Socket.IO reserves."""


class InvalidPayload(ValueError):
    """A payload that is not sanitised (see the module doc); the message names the field."""


def check_event_name(name: object) -> str:
    """Return `name` if it may be emitted to clients, else raise InvalidEvent saying why."""
    if not isinstance(name, str):
        raise InvalidEvent(f"an event name is a string, got {type(name).__name__}")
    if name in RESERVED_EVENTS:
        raise InvalidEvent(f"{name!r} is reserved by Socket.IO and cannot be emitted")
    if EVENT_NAME_RE.fullmatch(name) is None:
        raise InvalidEvent(
            f"{name[:80]!r} is not an event name: 1 to 64 characters among A-Z a-z 0-9 _ : . -"
        )
    return name


# ---------------------------------------------------------------------------------------------
# sanitize


class _Bad(Exception):
    """Unwinds the walk; each level adds its key, so paths are built only on failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(text: str, what: str = "") -> None:
    """Raise _Bad for a control character or a lone surrogate in a string or key.

    Called only for strings that are not `isprintable()` (a fast C loop that is True for
    nearly every real string), so most payloads never reach the regexes.
    """
    bad = _CONTROL.search(text)
    if bad is not None:
        raise _Bad(f"{what}control character U+{ord(bad.group()):04X} is not allowed")
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise _Bad(f"{what}lone surrogate U+{ord(bad.group()):04X} cannot be encoded as UTF-8")


def _int_problem(value: int) -> _Bad:
    return _Bad(f"integer {value} is beyond ±(2**53 - 1): JavaScript cannot hold it exactly")


def _walk(value: Any, depth: int) -> None:
    # Containers check their scalar items inline: a call per leaf would double the cost of a
    # typical payload, and this runs on every emit.
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if type(key) is not str:
                raise _Bad(f"key {_show(key)} is of type {type(key).__name__}, not str")
            try:
                if not key.isprintable():
                    _check_text(key, "key: ")
                kind = type(item)
                if kind is str:
                    if not item.isprintable():
                        _check_text(item)
                elif kind is int:
                    if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                        raise _int_problem(item)
                elif kind is not bool and item is not None:
                    _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(key)
                raise
    elif kind is list:
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
        for index, item in enumerate(value):
            try:
                kind = type(item)
                if kind is str:
                    if not item.isprintable():
                        _check_text(item)
                elif kind is int:
                    if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                        raise _int_problem(item)
                elif kind is not bool and item is not None:
                    _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(index)
                raise
    elif kind is str:
        if not value.isprintable():
            _check_text(value)
    elif kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise _int_problem(value)
    elif kind is float:
        if not math.isfinite(value):
            raise _Bad(f"{value} has no JSON form; only finite numbers do")
    elif kind is not bool and value is not None:
        _walk(_as_base_type(value), depth)


def _as_base_type(value: Any) -> Any:
    # What orjson encodes as its base type (and loads back equal): subclasses of str, int,
    # dict and list, e.g. a StrEnum or an OrderedDict. Everything else is refused by name.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise _Bad(
        f"a {type(value).__name__} is not a JSON type "
        "(use dict, list, str, int, float, bool or None)"
    )


def _format_path(root: str, path: list[str | int]) -> str:
    parts = [root]
    for step in reversed(path):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{step!r}]")
    return "".join(parts)


def sanitize(data: Any, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """The payload's compact JSON if it is sanitised (module doc), else InvalidPayload."""
    try:
        _walk(data, 0)
    except _Bad as bad:
        raise InvalidPayload(f"{_format_path('data', bad.path)}: {bad.reason}") from None
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:  # a safety net: the walk should have refused it
        raise InvalidPayload(f"data: cannot be encoded as JSON: {exc}") from None
    if len(body) > max_bytes:
        raise InvalidPayload(
            f"data: the encoded payload is {len(body)} bytes, over the limit of {max_bytes}"
        )
    return body


# ---------------------------------------------------------------------------------------------
# the five events of the contract: typed payloads, their schemas, validation, TypeScript


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


_TS_TYPES: Final = {
    "string": "string", "integer": "number", "boolean": "boolean", "datetime": "string",
    "object": "Record<string, unknown>",
}


def _ts_interface(schema: ObjectSchema) -> list[str]:
    lines = [f"/** {schema.doc} */"] if schema.doc else []
    lines.append(f"export interface {schema.interface} {{")
    for spec in schema.fields:
        doc = spec.doc or ("ISO 8601 date-time, e.g. 2024-05-01T12:00:00.000Z"
                           if spec.type == "datetime" else "")
        if doc:
            lines.append(f"  /** {doc} */")
        ts_type = spec.nested.interface if spec.nested else _TS_TYPES[spec.type]
        lines.append(f"  {spec.name}{'?' if spec.optional else ''}: {ts_type};")
    lines.append("}")
    return lines


def typescript_declarations(schemas: Mapping[str, EventSchema] = EVENT_SCHEMAS) -> str:
    """A `.d.ts` with an interface per payload and socket.io-client's `ServerToClientEvents`.

    The optional second listener argument is the connection-state-recovery offset that the
    server appends to each event (socket.io-client passes it on).
    """
    seen: dict[str, ObjectSchema] = {}
    order: list[ObjectSchema] = []

    def collect(schema: ObjectSchema) -> None:
        known = seen.get(schema.interface)
        if known is not None:
            if known != schema:
                raise ValueError(f"two different shapes are both named {schema.interface}")
            return
        seen[schema.interface] = schema
        order.append(schema)
        for spec in schema.fields:
            if spec.nested is not None:
                collect(spec.nested)

    for event_schema in schemas.values():
        collect(event_schema.payload)
    lines = [
        "// Generated by publisher.events.typescript_declarations() from EVENT_SCHEMAS.",
        "// Do not edit: change the schemas and generate again.",
        "// Payloads may carry extra keys that producers added.",
        "",
    ]
    for schema in order:
        lines.extend(_ts_interface(schema))
        lines.append("")
    lines.append("/** Events the server emits on the /notifications namespace. */")
    lines.append("export interface ServerToClientEvents {")
    for event, event_schema in schemas.items():
        interface = event_schema.payload.interface
        lines.append(f'  "{event}": (data: {interface}, offset?: string) => void;')
    lines.append("}")
    return "\n".join(lines) + "\n"
