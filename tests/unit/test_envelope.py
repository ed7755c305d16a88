"""publisher.envelope: names, encoding, and a decoder that refuses anything but a v1 envelope."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from publisher.envelope import (
    NAMESPACE,
    VERSION,
    BusNames,
    Control,
    EnvelopeError,
    Event,
    Offset,
    decode,
    encode_control,
    encode_event,
    parse_offset,
)
from publisher.events import sanitize


def published(envelope: bytes, offset: str = "ab12:1700000000000-7") -> bytes:
    """What the publish script does to an envelope."""
    assert envelope.endswith(b"}")
    return envelope[:-1] + b',"o":"' + offset.encode() + b'"}'


def test_default_names_match_the_spec() -> None:
    names = BusNames()
    assert NAMESPACE == "/notifications"
    assert names.room_channel("user:42") == "socket.io#/notifications#user:42#"
    assert names.broadcast_channel() == "socket.io#/notifications#"
    assert names.clock_key() == "ngw:clock"
    assert names.history_key("user:42") == "ngw:h:user:42"
    assert names.session_key("p1") == "ngw:s:p1"
    assert names.user_sessions_key("42") == "ngw:sessions:42"
    assert names.revoked_key("42") == "ngw:revoked:42"
    assert names.replicas_key() == "ngw:replicas"
    assert names.online_key("r1") == "ngw:online:r1"


def test_names_follow_the_prefixes() -> None:
    names = BusNames("app1.io", "t1")
    assert names.room_channel("classroom:7") == "app1.io#/notifications#classroom:7#"
    assert names.history_key("classroom:7") == "t1:h:classroom:7"


@pytest.mark.parametrize(("channel", "key"), [("", "ngw"), ("a#b", "ngw"), ("socket.io", "")])
def test_bad_prefixes_are_refused(channel: str, key: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        BusNames(channel, key)


def test_event_round_trip() -> None:
    data = {"amount": 50, "reason": "quiz", "newBalance": 1250}
    envelope = encode_event("coins:earned", sanitize(data), "user:42", 1700000000000.25)
    assert b'"o"' not in envelope
    assert envelope.endswith(b"}")
    assert orjson.loads(envelope) == {
        "v": VERSION, "k": "e", "t": 1700000000000.25, "ev": "coins:earned", "d": data,
        "r": "user:42",
    }
    message = decode(published(envelope))
    assert message == Event("coins:earned", data, "user:42", 1700000000000.25,
                            "ab12:1700000000000-7", "ab12", 1700000000000, 7)


def test_event_data_may_be_an_object_and_room_none() -> None:
    envelope = encode_event("x", [1, "two", None], None, 5)
    message = decode(published(envelope))
    assert isinstance(message, Event)
    assert (message.d, message.r, message.t) == ([1, "two", None], None, 5)


def test_encode_event_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(EnvelopeError, match="not JSON-serialisable"):
        encode_event("x", {1, 2}, None, 5)


def test_control_round_trip() -> None:
    join = decode(published(encode_control("join", "42", ["classroom:1", "classroom:2"], 9.5)))
    assert join == Control("join", "42", ("classroom:1", "classroom:2"), 9.5,
                           "ab12:1700000000000-7", "ab12", 1700000000000, 7)
    kick = decode(published(encode_control("kick", "42", None, 9.5)))
    assert isinstance(kick, Control)
    assert (kick.k, kick.u, kick.rooms) == ("kick", "42", ())
    assert "rooms" not in orjson.loads(encode_control("kick", "42", None, 1))


@pytest.mark.parametrize(("kind", "rooms", "words"), [
    ("join", None, "at least one room"),
    ("leave", [], "at least one room"),
    ("kick", ["user:1"], "no rooms"),
    ("e", None, "unknown control kind"),
])
def test_encode_control_refuses_bad_shapes(kind: str, rooms: list[str] | None, words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        encode_control(kind, "42", rooms, 1)


def test_messages_are_immutable() -> None:
    message = decode(published(encode_event("x", {}, None, 1)))
    with pytest.raises(AttributeError):
        message.ev = "y"  # type: ignore[misc]
    assert not hasattr(message, "__dict__")


def test_offsets() -> None:
    offset = parse_offset("0123abcd:1700000000123-42")
    assert offset == Offset("0123abcd", 1700000000123, 42)
    assert offset.stream_id == "1700000000123-42"
    assert str(offset) == "0123abcd:1700000000123-42"
    assert parse_offset("uuid-like-epoch_1:0-0") == Offset("uuid-like-epoch_1", 0, 0)


@pytest.mark.parametrize("text", [
    "", "abc", "abc:1", "abc:1-", "abc:-1", ":1-2", "a:b:1-2", "abc:1-2-3", "abc:1.5-2",
    "abc: 1-2", "abc:+1-2", "abc:\uff11-2", "a b:1-2", "x" * 65 + ":1-2", "abc:1234567890123456-1",
    "abc:1-12345678901234567890", "abc:1-2\n",
])
def test_bad_offsets(text: str) -> None:
    with pytest.raises(EnvelopeError, match="bad offset"):
        parse_offset(text)


def test_offset_must_be_a_string() -> None:
    with pytest.raises(EnvelopeError, match="string"):
        parse_offset(12)


GOOD = {"v": 1, "k": "e", "t": 1.5, "ev": "x", "d": {}, "r": "user:1", "o": "e:1-2"}


@pytest.mark.parametrize(("change", "words"), [
    ({"v": 2}, "unsupported envelope version 2"),
    ({"v": True}, "unsupported envelope version True"),
    ({"v": 1.0}, "unsupported envelope version 1.0"),
    ({"v": None}, "unsupported envelope version None"),
    ({"k": "x"}, "unknown kind 'x'"),
    ({"k": None}, "unknown kind None"),
    ({"k": []}, "unknown kind []"),
    ({"k": {"join": 1}}, "unknown kind {'join': 1}"),
    ({"v": [1]}, "unsupported envelope version [1]"),
    ({"ev": "x" * 1000}, "'ev' is not an event name: 'xxxxxxxx"),
    ({"t": "1"}, "'t' must be a number"),
    ({"t": None}, "'t' must be a number"),
    ({"t": True}, "'t' must be a number"),
    ({"o": None}, "no offset"),
    ({"o": 5}, "an offset is a string"),
    ({"o": "e:1"}, "bad offset"),
    ({"ev": "connect"}, "not an event name"),
    ({"ev": "a b"}, "not an event name"),
    ({"ev": ""}, "not an event name"),
    ({"ev": 5}, "not an event name"),
    ({"ev": None}, "not an event name"),
    ({"r": 5}, "'r' must be a room name or null"),
    ({"r": False}, "'r' must be a room name or null"),
])
def test_decode_names_what_is_wrong(change: dict[str, Any], words: str) -> None:
    with pytest.raises(EnvelopeError, match=re.escape(words)) as info:
        decode(orjson.dumps({**GOOD, **change}))
    assert len(str(info.value)) < 200  # never an unbounded echo of the input


@pytest.mark.parametrize(("drop", "words"), [
    ("v", "version None"), ("t", "'t' must be"), ("o", "no offset"), ("ev", "event name"),
    ("d", "without 'd'"), ("r", "'r' must be"), ("k", "unknown kind None"),
])
def test_decode_requires_every_key(drop: str, words: str) -> None:
    message = {k: v for k, v in GOOD.items() if k != drop}
    with pytest.raises(EnvelopeError, match=words):
        decode(orjson.dumps(message))


@pytest.mark.parametrize(("message", "words"), [
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "", "rooms": []}, "'u' must be"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": 4, "rooms": []}, "'u' must be"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "4"}, "'rooms' must be"),
    ({"v": 1, "k": "leave", "t": 1, "o": "e:1-2", "u": "4", "rooms": "user:4"}, "'rooms' must"),
    ({"v": 1, "k": "leave", "t": 1, "o": "e:1-2", "u": "4", "rooms": [1]}, "'rooms' must be"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "4", "rooms": []}, "'rooms' must be a non-empty"),
    # names a replica builds from `u` and `rooms` (issue 12, item 10): refused at decoding, so
    # the bus listener never meets them
    ({"v": 1, "k": "kick", "t": 1, "o": "e:1-2", "u": "x" * 257}, "'u' is not a user id: .*257 characters"),
    ({"v": 1, "k": "kick", "t": 1, "o": "e:1-2", "u": "a\nb"}, "'u' is not a user id: .*character"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "4", "rooms": ["q" * 301]}, "not a room: .*301"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "4", "rooms": ["user:" + "x" * 257]}, "not a room"),
    ({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "4", "rooms": ["classroom:1", "admin:x"]},
     "only admin room"),
    ({"v": 1, "k": "leave", "t": 1, "o": "e:1-2", "u": "4", "rooms": ["lobby\x00"]}, "not a room"),
])
def test_decode_control_checks(message: dict[str, Any], words: str) -> None:
    with pytest.raises(EnvelopeError, match=words) as info:
        decode(orjson.dumps(message))
    assert len(str(info.value)) < 300  # never an unbounded echo of the input


def test_decode_takes_the_control_messages_of_the_grammar() -> None:
    join = decode(orjson.dumps({"v": 1, "k": "join", "t": 1, "o": "e:1-2", "u": "x" * 256,
                                "rooms": ["quiz:9", "classroom:1", "q" * 300, "admin:all"]}))
    assert isinstance(join, Control)
    assert join.rooms == ("quiz:9", "classroom:1", "q" * 300, "admin:all")


def test_unknown_keys_are_ignored() -> None:
    message = decode(orjson.dumps({**GOOD, "trace": "abc", "x": [1]}))
    assert isinstance(message, Event)


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty message"),
    (b"\x93\xa6emitter", "msgpack"),
    (b"[1]", "not a JSON object"),
    (b" {}", "not a JSON object"),
    (b"{", "not JSON"),
    (b'{"v":1,}', "not JSON"),
    (b'{"v":1}{}', "not JSON"),
    (b"{\xff}", "not JSON"),
])
def test_decode_refuses_non_envelopes(raw: bytes, words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        decode(raw)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_decode_of_any_bytes_raises_only_envelope_error(raw: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(raw)


# Integers beyond 64 bits and floats beyond double range are included: orjson refuses them.
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=20))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELD = st.one_of(
    JSON,
    st.sampled_from(["e", "join", "leave", "kick", "coins:earned", "connect", "user:1",
                     "e:1-2", "x:99999999999-1", "abc:1-2-3"]),
    st.lists(st.sampled_from(["user:1", "classroom:2", 3]), max_size=3),
)
LIKELY = {"v": 1, "k": "e", "t": 1.5, "o": "e:1-2", "ev": "x", "d": {}, "r": "user:1",
          "u": "1", "rooms": ["classroom:1"], "extra": None}
# Each key is usually present and often well-formed, so the decoder's later checks are reached.
ENVELOPES = st.fixed_dictionaries({}, optional={
    key: st.one_of(st.just(good), FIELD) for key, good in LIKELY.items()
})


@settings(max_examples=400)
@given(ENVELOPES)
def test_decode_of_any_json_object_raises_only_envelope_error(message: dict[str, Any]) -> None:
    try:
        decoded = decode(json.dumps(message).encode())
    except EnvelopeError:
        return
    assert decoded.o == message["o"]


@settings(max_examples=400)
@given(JSON)
def test_decode_of_any_json_raises_only_envelope_error(value: Any) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(json.dumps(value).encode())
