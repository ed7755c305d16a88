"""@socket.io/redis-emitter 5.x (and the Node redis-adapter's broadcasts and requests), decoded.

Broadcasts are msgpack `[uid, packet, opts]` on `<prefix>#<nsp>#` or `<prefix>#<nsp>#<room>#`:
`packet` = {type: 2 (EVENT) | 5 (BINARY_EVENT), data: [event, ...args], nsp}, `opts` =
{rooms: [...], except: [...], flags: {volatile, compress}}. Requests are JSON (msgpack from
some adapter versions) on `<prefix>-request#<nsp>#`: {type, opts: {rooms, except}, rooms, close}
with type 2 socketsJoin, 3 socketsLeave, 4 disconnectSockets; the others (fetchSockets,
allRooms, serverSideEmit...) need an answer or a server of their own: refused.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from publisher.bridge.operations import (
    Emit,
    Operation,
    Refused,
    RoomsChange,
    check_namespace,
    check_size,
    only_payload,
)

EVENT = 2
BINARY_EVENT = 5
REMOTE_JOIN = 2
REMOTE_LEAVE = 3
REMOTE_DISCONNECT = 4
REQUEST_NAMES = {0: "sockets", 1: "allRooms", 5: "fetchSockets", 6: "serverSideEmit",
                 7: "serverSideEmit response", 8: "broadcast with ack"}


def _unpack(raw: bytes) -> Any:
    check_size(raw)
    try:
        # strict_map_key=False: a payload may use integer keys (then refused by the publisher's
        # payload checks with a clear message, not here with msgpack's)
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise Refused("malformed", f"not msgpack: {exc}") from None
    except TypeError as exc:  # a map keyed by an array or a map: no Python dict can hold it
        raise Refused("malformed", f"not msgpack that maps to JSON: {exc}") from None


def _rooms(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(room, str) for room in value):
        raise Refused("malformed", f"{what} must be a list of room names")
    return tuple(dict.fromkeys(value))


def decode_broadcast(raw: bytes) -> Emit:
    """A broadcast of the emitter (or of a Node server's adapter), as an `Emit`."""
    message = _unpack(raw)
    if not isinstance(message, list) or len(message) < 3:
        raise Refused("malformed", "expected [uid, packet, opts]")
    _, packet, opts = message[:3]
    if not isinstance(packet, dict) or not isinstance(opts, dict):
        raise Refused("malformed", "packet and opts must be maps")
    check_namespace(packet.get("nsp"))
    kind = packet.get("type")
    if kind == BINARY_EVENT:
        raise Refused("binary", "a binary event: the gateway sends JSON payloads only")
    if kind != EVENT:
        raise Refused("malformed", f"packet type {kind!r}: only EVENT (2) is bridged")
    data = packet.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise Refused("malformed", "packet data must be [event name, ...arguments]")
    if packet.get("id") is not None:
        raise Refused("ack", "an event expecting an acknowledgement")
    return Emit(data[0], only_payload(data[1:]), _rooms(opts.get("rooms"), "opts.rooms"),
                _rooms(opts.get("except"), "opts.except"))


def decode_request(raw: bytes) -> Operation:
    """A request of the emitter (socketsJoin, socketsLeave, disconnectSockets)."""
    check_size(raw)  # JSON as msgpack: parsing a huge one whole is what the limit prevents
    if raw[:1] == b"{":
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused("malformed", f"not JSON: {exc}") from None
    else:
        request = _unpack(raw)
    if not isinstance(request, dict):
        raise Refused("malformed", "a request must be an object")
    kind = request.get("type")
    opts = request.get("opts")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise Refused("malformed", "opts must be an object")
    of = _rooms(opts.get("rooms"), "opts.rooms")
    excluded = _rooms(opts.get("except"), "opts.except")
    if kind in (REMOTE_JOIN, REMOTE_LEAVE):
        rooms = _rooms(request.get("rooms"), "rooms")
        if not rooms:
            raise Refused("malformed", "socketsJoin/socketsLeave without rooms")
        return RoomsChange("join" if kind == REMOTE_JOIN else "leave", of, rooms, excluded)
    if kind == REMOTE_DISCONNECT:
        return RoomsChange("disconnect", of, (), excluded)
    name = REQUEST_NAMES.get(kind, repr(kind)[:20]) if isinstance(kind, int) else "?"
    raise Refused("unsupported_request", f"request {name}: only socketsJoin, socketsLeave and "
                                         "disconnectSockets are bridged")


def namespace_of(channel: str, prefix: str) -> str:
    """The namespace a channel `<prefix>#<nsp>#...` or `<prefix>-request#<nsp>#` is for."""
    for head in (prefix + "#", prefix + "-request#"):
        if channel.startswith(head):
            rest = channel[len(head):]
            return rest.split("#", 1)[0]
    return ""
