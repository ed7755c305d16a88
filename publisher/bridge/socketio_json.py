"""python-socketio's `RedisManager` / `AsyncRedisManager` messages, decoded: JSON only.

Current python-socketio (5.x, checked with 5.18) publishes JSON objects {method, ...} on its
channel, encoded with its `json` module (the standard `json` unless the server or manager was
given another); older releases published pickles. A pickle is never
unpickled here (unpickling runs code the sender chose): refused and counted, and the docs tell
producers to upgrade. Fields, as `socketio.pubsub_manager` writes them:
emit {event, data: [args], namespace, room (str | list | None), skip_sid, callback, binary},
enter_room / leave_room {sid, room, namespace}, disconnect {sid, namespace},
close_room {room, namespace}.

Operations on one socket by its sid (enter_room, leave_room, disconnect, `skip_sid`) are
refused: a write-only producer has no socket of this gateway to name (its sids are another
server's), and a gateway socket is addressed by its user (`user:<id>`) or its rooms.
"""

from __future__ import annotations

from typing import Any

import orjson

from publisher.bridge.operations import Emit, Operation, Refused, RoomsChange, check_namespace, check_size, only_payload

PICKLE_PROTOCOL_MARK = b"\x80"  # every pickle of protocol 2 or later starts with it


def _rooms(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(room, str) for room in value):
        return tuple(dict.fromkeys(value))
    raise Refused("malformed", "'room' must be a room name, a list of them, or null")


def decode(raw: bytes) -> Operation:
    check_size(raw)
    if raw.startswith(PICKLE_PROTOCOL_MARK):
        raise Refused("pickle", "a pickled message (an old python-socketio release): never "
                                "unpickled; upgrade the producer's python-socketio, which publishes JSON")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused("malformed", f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise Refused("malformed", "a message must be a JSON object")
    method = message.get("method")
    if method == "callback":
        raise Refused("unsupported", "an acknowledgement callback (the gateway's events take none)")
    check_namespace(message.get("namespace"))
    if method == "emit":
        return _emit(message)
    if method in ("enter_room", "leave_room", "disconnect"):
        raise Refused("sid_target", f"{method} names one socket by sid: address it by its user "
                                    "room (user:<id>) with the publisher's join/leave/disconnect_user")
    if method == "close_room":
        room = message.get("room")
        if not isinstance(room, str):
            raise Refused("malformed", "close_room without a room name")
        return RoomsChange("leave", (room,), (room,))
    raise Refused("unsupported", f"method {str(method)[:40]!r}")


def _emit(message: dict[str, Any]) -> Emit:
    if message.get("callback") is not None:
        raise Refused("ack", "an emit with a callback: the gateway's events take no acknowledgement")
    if message.get("skip_sid") is not None:
        raise Refused("sid_target", "skip_sid names sockets by sid: not known to this gateway")
    if message.get("binary"):
        raise Refused("binary", "a binary emit: the gateway sends JSON payloads only")
    event = message.get("event")
    if not isinstance(event, str):
        raise Refused("malformed", "emit without an event name")
    data = message.get("data")
    if not isinstance(data, list):
        raise Refused("malformed", "emit data must be the list of arguments")
    return Emit(event, only_payload(data), _rooms(message.get("room")))
