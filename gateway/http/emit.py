"""POST /api/emit: the bus for producers that are not Python (the TypeScript backend) and for
trying things in `--dev`. The same checks as the publisher library, written once there.

Body: `{"event": ..., "data": ..., "room" | "user" | "all": ..., "strict"?: true}` with exactly
one target; `Authorization: Bearer <PUBLISH_API_KEY>`. Answers 200 `{"ok": true, "offset": ...}`,
or 4xx `{"ok": false, "error": <code>, "detail": <what is wrong>}`, or 503 when the bus cannot
take it (nothing was published: retry).

The rule is the library's `emit`: any sanitised payload under the size limit, any room of the
grammar (`quiz:9`); `"strict": true` also checks the five contract events against their schema,
as the library's typed helpers do.

The body is read whole (up to its bound) before it is parsed: a request whose body arrives in
several TCP segments is one request, never a truncated one answered 400.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.bus.contract import BusUnavailable
from gateway.delivery.core import DeliveryCore
from publisher.events import check_event_name, sanitize, validate
from publisher.rooms import check_room, user_room

log = logging.getLogger("gateway.http")


class EmitEndpoint:
    def __init__(self, core: DeliveryCore, api_key: str, max_payload_bytes: int, metrics: Any) -> None:
        self.core = core
        self.key = api_key.encode()
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics

    def _refuse(self, status: int, error: str, detail: str) -> web.Response:
        self.metrics.http_emit(error)
        return web.json_response({"ok": False, "error": error, "detail": detail}, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if not given or not hmac.compare_digest(given, self.key):
            return self._refuse(401, "unauthorized", "send Authorization: Bearer <PUBLISH_API_KEY>")
        limit = self.max_payload_bytes + 4096  # the payload plus the envelope's other members
        if request.content_length is not None and request.content_length > limit:
            return self._refuse(413, "payload_too_large", f"the body is over {self.max_payload_bytes} bytes")
        try:
            raw = await read_body(request, limit)
        except (ConnectionError, HttpProcessingError) as exc:  # the client left, or cut its body short
            return self._refuse(400, "incomplete_body", f"the body did not arrive whole: {exc}")
        if raw is None:
            return self._refuse(413, "payload_too_large", f"the body is over {self.max_payload_bytes} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._refuse(400, "invalid_json", f"the body is not JSON: {exc}")
        try:
            event, data, room = parse_emit(body, self.max_payload_bytes)
        except ValueError as exc:
            return self._refuse(400, "invalid_request", str(exc))
        try:
            offset = await self.core.publish(event, data, room)
        except BusUnavailable as exc:
            log.warning("emit refused: bus unavailable", extra={"event": event})
            self.metrics.http_emit("bus_unavailable")
            return web.json_response({"ok": False, "error": "bus_unavailable", "detail": str(exc)}, status=503,
                                     headers={"Retry-After": "1"})
        self.metrics.http_emit("ok")
        return web.json_response({"ok": True, "offset": offset})


async def read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The whole body, or None when it is over `limit` bytes (read no further than that).
    Raises ConnectionError or HttpProcessingError when the client goes before its body ends.

    `content.read(n)` returns what has arrived so far, not n bytes: one call reads a body
    split over TCP segments only in part. Chunked bodies have no Content-Length to trust, so
    the bound is counted here, whatever the header said.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def parse_emit(body: Any, max_payload_bytes: int) -> tuple[str, Any, str | None]:
    """(event, data, room or None for everyone), or ValueError saying what is wrong.

    The library's `emit` rule (module docstring): the schema of a contract event is checked
    only when the body says `"strict": true`.
    """
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: {event, data, room | user | all}")
    event = body.get("event")
    if not isinstance(event, str):
        raise ValueError("event: required, a string such as 'coins:earned'")
    check_event_name(event)
    if "data" not in body:
        raise ValueError("data: required (the event's payload)")
    data = body["data"]
    targets = [k for k in ("room", "user", "all") if body.get(k) not in (None, False)]
    if len(targets) != 1:
        raise ValueError("give exactly one target: room, user or all")
    room: str | None
    strict = body.get("strict", False)
    if not isinstance(strict, bool):
        raise ValueError("strict: must be true or false (true: check the contract events' schemas)")
    if targets[0] == "room":
        if not isinstance(body["room"], str):
            raise ValueError("room: must be a string such as 'classroom:7' or 'quiz:9'")
        room = check_room(body["room"])
    elif targets[0] == "user":
        room = user_room(body["user"])
    else:
        if body["all"] is not True:
            raise ValueError("all: must be true")
        room = None
    sanitize(data, max_payload_bytes)
    if strict:
        validate(event, data)
    return event, data, room
