"""The bridge's decoders (publisher.bridge.emitter, publisher.bridge.socketio_json): what the
real producers send becomes bus operations; anything else is refused with a reason (the metric
label) and a message saying what is wrong, never another exception."""

from __future__ import annotations

import json
import pickle
from typing import Any

import msgpack
import pytest

from publisher.bridge import emitter, socketio_json
from publisher.bridge.operations import MAX_MESSAGE_BYTES, Emit, Refused, RoomsChange


def broadcast(data: list[Any], rooms: list[str] | None = None, excluded: list[str] | None = None,
              nsp: str = "/notifications", kind: int = 2, **packet: Any) -> bytes:
    """A message as @socket.io/redis-emitter 5.x packs it: [uid, packet, opts]."""
    return msgpack.packb(["emitter", {"type": kind, "data": data, "nsp": nsp, **packet},
                          {"rooms": rooms or [], "flags": {}, "except": excluded or []}])


def test_emitter_broadcasts_become_emits() -> None:
    assert emitter.decode_broadcast(broadcast(["coins:earned", {"amount": 5}], ["user:1"])) == \
        Emit("coins:earned", {"amount": 5}, ("user:1",))
    assert emitter.decode_broadcast(broadcast(["news", 1], ["a", "b", "a"], ["c"])) == \
        Emit("news", 1, ("a", "b"), ("c",))
    assert emitter.decode_broadcast(broadcast(["ping"])) == Emit("ping", None, ())


@pytest.mark.parametrize(("raw", "reason", "words"), [
    (b"\x93\xc1\x00\x00", "malformed", "not msgpack"),
    (b"\xff", "malformed", "expected [uid, packet, opts]"),
    (msgpack.packb(["emitter", 1, {}]), "malformed", "maps"),
    (msgpack.packb(["emitter", {"type": 2, "data": [1], "nsp": "/notifications"}, {}]), "malformed", "event name"),
    (broadcast(["e", 1], nsp="/"), "namespace", "only /notifications"),
    (broadcast(["e", b"\x00"], kind=5), "binary", "binary"),
    (broadcast(["e", 1], kind=3), "malformed", "packet type"),
    (broadcast(["e", 1, 2]), "arguments", "2 arguments"),
    (broadcast(["e", 1], id=4), "ack", "acknowledgement"),
    (broadcast(["e", 1], rooms=[1]), "malformed", "opts.rooms"),  # type: ignore[list-item]
    (b"\x93" + b"\x00" * (MAX_MESSAGE_BYTES + 1), "too_large", "bytes"),
    (b"\x93\xa1u\x81\x91\x01\x01\x80", "malformed", "not msgpack"),  # a map keyed by an array
])
def test_emitter_broadcasts_refused(raw: bytes, reason: str, words: str) -> None:
    with pytest.raises(Refused) as caught:
        emitter.decode_broadcast(raw)
    assert caught.value.reason == reason
    assert words in caught.value.detail


def request(kind: int, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


def test_emitter_requests() -> None:
    opts = {"rooms": ["classroom:1"], "except": ["user:2"]}
    assert emitter.decode_request(request(2, opts=opts, rooms=["quiz:9"])) == \
        RoomsChange("join", ("classroom:1",), ("quiz:9",), ("user:2",))
    assert emitter.decode_request(request(3, opts={"rooms": [], "except": []}, rooms=["quiz:9"])) == \
        RoomsChange("leave", (), ("quiz:9",))
    assert emitter.decode_request(request(4, opts=opts, close=True)) == \
        RoomsChange("disconnect", ("classroom:1",), (), ("user:2",))
    # some adapter versions send requests as msgpack
    assert emitter.decode_request(msgpack.packb({"type": 4, "opts": {}})) == RoomsChange("disconnect", (), ())


@pytest.mark.parametrize(("raw", "reason"), [
    (request(6, data=["hello"]), "unsupported_request"),
    (request(5, opts={}), "unsupported_request"),
    (request(2, opts={}, rooms=[]), "malformed"),
    (request(2, opts=[], rooms=["a"]), "malformed"),
    (b"{not json", "malformed"),
    (b"[1,2]", "malformed"),
    (b"\xc1", "malformed"),
    (b"\x81\x91\x01\x01", "malformed"),  # msgpack: a map keyed by an array (unhashable)
    (b'{"type": 2, "rooms": ["' + b"a" * MAX_MESSAGE_BYTES + b'"]}', "too_large"),  # JSON too
])
def test_emitter_requests_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(Refused) as caught:
        emitter.decode_request(raw)
    assert caught.value.reason == reason


def test_namespace_of_channels() -> None:
    assert emitter.namespace_of("socket.io#/notifications#", "socket.io") == "/notifications"
    assert emitter.namespace_of("socket.io#/notifications#user:1#", "socket.io") == "/notifications"
    assert emitter.namespace_of("socket.io-request#/#", "socket.io") == "/"
    assert emitter.namespace_of("other#/x#", "socket.io") == ""


def sio(method: str, **fields: Any) -> bytes:
    """A message as python-socketio's PubSubManager publishes it (JSON)."""
    return json.dumps({"method": method, "namespace": "/notifications", "host_id": "h", **fields}).encode()


def test_python_socketio_messages() -> None:
    emit = {"event": "news", "data": [{"x": 1}], "binary": False, "skip_sid": None, "callback": None}
    assert socketio_json.decode(sio("emit", room="user:1", **emit)) == Emit("news", {"x": 1}, ("user:1",))
    assert socketio_json.decode(sio("emit", room=["a", "b"], **emit)) == Emit("news", {"x": 1}, ("a", "b"))
    assert socketio_json.decode(sio("emit", room=None, **emit)) == Emit("news", {"x": 1}, ())
    assert socketio_json.decode(sio("close_room", room="quiz:1")) == RoomsChange("leave", ("quiz:1",), ("quiz:1",))


@pytest.mark.parametrize(("raw", "reason"), [
    (pickle.dumps({"method": "emit", "event": "e", "data": [1], "namespace": "/notifications"}), "pickle"),
    (pickle.dumps({"method": "emit"}, protocol=5), "pickle"),
    (b"{oops", "malformed"),
    (b"[]", "malformed"),
    (json.dumps({"method": "emit", "event": "e", "data": [1], "namespace": "/"}).encode(), "namespace"),
    (sio("emit", event="e", data=[1], callback=["r", "/notifications", 1]), "ack"),
    (sio("emit", event="e", data=[1], skip_sid="abc"), "sid_target"),
    (sio("emit", event="e", data=[1], binary=True), "binary"),
    (sio("emit", event="e", data=[1, 2]), "arguments"),
    (sio("emit", event="e", data=1), "malformed"),
    (sio("emit", event=None, data=[1]), "malformed"),
    (sio("emit", event="e", data=[1], room=5), "malformed"),
    (sio("enter_room", sid="abc", room="quiz:1"), "sid_target"),
    (sio("leave_room", sid="abc", room="quiz:1"), "sid_target"),
    (sio("disconnect", sid="abc"), "sid_target"),
    (sio("close_room", room=None), "malformed"),
    (sio("callback", id=1, args=[]), "unsupported"),
    (sio("frobnicate"), "unsupported"),
    (sio("emit", event="e", data=["x" * MAX_MESSAGE_BYTES]), "too_large"),
])
def test_python_socketio_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(Refused) as caught:
        socketio_json.decode(raw)
    assert caught.value.reason == reason
    assert caught.value.detail
