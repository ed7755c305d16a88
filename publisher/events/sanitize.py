"""Payload sanitising: what any event's payload must be to travel to a browser.

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

Apart from the contract's schemas (`schemas`): every payload of every event is sanitised on
every emit, and this walk is tuned for that; a schema is checked for five events, on request.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

__all__ = ["MAX_DEPTH", "MAX_PAYLOAD_BYTES", "MAX_SAFE_INTEGER", "InvalidPayload", "sanitize"]

MAX_PAYLOAD_BYTES: Final = 65_536
MAX_DEPTH: Final = 32
MAX_SAFE_INTEGER: Final = 2**53 - 1

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


class InvalidPayload(ValueError):
    """A payload that is not sanitised (see the module doc); the message names the field."""


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
