"""The development console at `/` (only with --dev): see events arrive, send test events.

The page, `static/console.html`, is self-contained: its Socket.IO client is plain JavaScript
inside it and it loads nothing from anywhere else. This module serves it with what it needs to
work at once, embedded as JSON: a token for user 1 (student, classroom 1) signed with this
replica's secret, which the page connects with as soon as it loads, the publish key of
`POST /api/emit`, and the contract's events with example payloads. `POST /console/token` mints
other tokens for the page (another user, role, classrooms, or a short life to watch
`token_expired`); it answers only requests that carry the console key embedded in the page, a
header a page of another origin cannot send.

The page holds secrets (the publish key, a key that mints admin tokens signed with the real
secret), so `create_app` adds these routes only with --dev, and they answer only when both hold:
- the TCP peer is a loopback address (`loopback_peer`: the socket's own peer address, never a
  header such as Host or X-Forwarded-For, which any client writes as it likes), so that a
  replica reachable from the network (HOST=0.0.0.0) does not hand them to other machines;
- the Host names this machine directly (`localhost`, an IP address), so that a DNS-rebound site
  open in a local browser cannot read them.
The page's own origin, which FRONTEND_URL does not list, may open sockets (`same_origin_sockets`),
under the same two conditions.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from multidict import CIMultiDict

from gateway.config import Settings
from gateway.config_parsers import is_loopback
from gateway.policy.keys import HMAC_ALGORITHMS
from gateway.policy.rooms import ROLES
from publisher.events import EVENT_SCHEMAS, ObjectSchema
from publisher.rooms import classroom_room, normalize_user_id, user_room

NAMESPACE = "/notifications"
SOCKET_PATH = "/socket.io/"
TEMPLATE = Path(__file__).with_name("static") / "console.html"
CONFIG_MARK = "__NGW_CONFIG__"
NONCE_MARK = "__NGW_NONCE__"
KEY_HEADER = "X-Console-Key"

DEFAULT_USER = "1"
DEFAULT_ROLE = "student"
DEFAULT_CLASSROOMS = ("1",)
DEFAULT_TTL = 86_400
MIN_TTL = -86_400  # a token that expired already: the handshake answers token_expired
MAX_TTL = 7 * 86_400
MAX_CLASSROOMS = 50

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def add_routes(app: web.Application, settings: Settings) -> None:
    """Serve the console on `app`, for the replica configured by `settings`.

    The settings come as an argument, not from the app's `Gateway`, so that this module never
    imports `gateway.app` (which imports it): no import cycle.
    """
    console = Console(settings, TEMPLATE.read_text(encoding="utf-8"))
    app.middlewares.append(same_origin_sockets)
    app.router.add_get("/", console.index)
    app.router.add_post("/console/token", console.token)


def local_host(request: web.Request) -> bool:
    """Whether the request's Host names this machine directly: an IP address, `localhost`
    (or `*.localhost`) or the machine's name. A page reached under any other name may be a DNS
    rebinding attack reading the console's secrets, as dev servers such as Vite refuse it."""
    return _local_name(request.url.host or "")


def _local_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost") or host == socket.gethostname().lower():
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def loopback_peer(request: web.Request) -> bool:
    """Whether the connection comes from this machine, by the socket's peer address."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False  # closed, or not an IP socket
    # A name never comes from the socket, so only the address forms of is_loopback can match.
    return is_loopback(peer[0].split("%", 1)[0])


@web.middleware
async def same_origin_sockets(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let the console's page open sockets to the replica that served it.

    FRONTEND_URL lists the real frontend's origins and the Origin check refuses any other, the
    console's (the gateway's own) included. A request whose Origin is the gateway's own comes
    from a page this process served: it goes on without its Origin header, as a request from a
    non-browser client does.
    """
    origin = request.headers.get("Origin")
    if (origin is not None and request.path.startswith(SOCKET_PATH)
            and origin == f"{request.scheme}://{request.host}" and local_host(request)
            and loopback_peer(request)):
        headers = CIMultiDict(request.headers)
        del headers["Origin"]
        request = request.clone(headers=headers)
    return await handler(request)


def own_page_origin(origin: str, host: str, peer: str | None) -> bool:
    """`same_origin_sockets` for the WebSocket requests the gateway accepts below aiohttp
    (gateway/ws, plain HTTP): whether a socket request with this Origin, Host header and peer
    address comes from the console's page that this process served."""
    if origin != f"http://{host}" or peer is None or not is_loopback(peer.split("%", 1)[0]):
        return False
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return _local_name(name.lower())


def _refusal(request: web.Request) -> web.Response | None:
    """Why the console will not answer this request (a 403), or None when it will."""
    if not loopback_peer(request):
        return web.Response(status=403, text=(
            "gateway --dev: the console answers clients on this machine only (a loopback peer "
            "address), because its page holds the publish key and mints tokens. Open it on the "
            "machine that runs the gateway, or through an SSH tunnel: ssh -L 8080:127.0.0.1:8080 ...\n"))
    if not local_host(request):
        return _not_local(request)
    return None


def _not_local(request: web.Request) -> web.Response:
    return web.Response(status=403, text=(
        f"gateway --dev: the console answers on localhost or an IP address, not on {request.host!r} "
        "(a guard against DNS rebinding). Open it as http://localhost:<port>/.\n"))


@dataclass
class Console:
    settings: Settings
    template: str
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        for mark in (CONFIG_MARK, NONCE_MARK):
            if mark not in self.template:
                raise ValueError(f"{TEMPLATE}: the page lacks its {mark} placeholder")

    @property
    def can_mint(self) -> bool:
        """Tokens can be signed here only with a shared secret (JWT_SECRET, else the first of
        JWT_SECRETS), not with public keys alone."""
        return self.settings.signing_secret is not None

    def mint(self, user: str, role: str, classrooms: Sequence[str], ttl: int) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {"sub": user, "role": role, "classrooms": list(classrooms),
                                  "iat": now, "exp": now + ttl}
        if self.settings.jwt_audience:
            claims["aud"] = self.settings.jwt_audience
        if self.settings.jwt_issuer:
            claims["iss"] = self.settings.jwt_issuer
        signing = self.settings.signing_secret
        if signing is None:
            raise ValueError("no shared secret to sign with (public keys only)")
        kid, secret = signing
        algorithm = next((a for a in self.settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
        return jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": kid} if kid else None)

    def page_config(self) -> dict[str, Any]:
        identity = {"user": DEFAULT_USER, "role": DEFAULT_ROLE, "classrooms": list(DEFAULT_CLASSROOMS),
                    "ttl": DEFAULT_TTL}
        token = self.mint(DEFAULT_USER, DEFAULT_ROLE, DEFAULT_CLASSROOMS, DEFAULT_TTL) if self.can_mint else ""
        return {
            "namespace": NAMESPACE,
            "token": token,
            "identity": identity,
            "roles": list(ROLES),
            "canMint": self.can_mint,
            "consoleKey": self.key,
            "publishKey": self.settings.publish_api_key,
            "events": list(EVENT_SCHEMAS),
            "examples": examples(datetime.fromtimestamp(self.clock(), UTC)),
            "recoveryWindow": self.settings.recovery_window,
        }

    async def index(self, request: web.Request) -> web.Response:
        refused = _refusal(request)
        if refused is not None:
            return refused
        nonce = secrets.token_urlsafe(18)
        page = self.template.replace(NONCE_MARK, nonce).replace(CONFIG_MARK, script_json(self.page_config()))
        connect = ["'self'"]
        if _HOST.fullmatch(request.host):
            connect += [f"ws://{request.host}", f"wss://{request.host}"]
        csp = "; ".join((
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            f"connect-src {' '.join(connect)}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ))
        headers = {
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=headers)

    async def token(self, request: web.Request) -> web.Response:
        """`{user, role, classrooms, ttl}` in, `{ok: true, token}` out."""
        refused = _refusal(request)
        if refused is not None:
            return refused
        given = request.headers.get(KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, self.key.encode()):
            return _refuse(403, "forbidden", f"send the {KEY_HEADER} of the page; reload it if the gateway "
                                             "was restarted")
        if not self.can_mint:
            return _refuse(409, "cannot_mint", "this gateway verifies tokens with a public key: paste a token "
                                               "signed by your identity provider")
        try:
            body = await request.json()
        except ValueError:
            return _refuse(400, "invalid_json", "the body is not JSON")
        try:
            user, role, classrooms, ttl = parse_identity(body)
        except ValueError as exc:
            return _refuse(400, "invalid_request", str(exc))
        return web.json_response({"ok": True, "token": self.mint(user, role, classrooms, ttl)},
                                 headers={"Cache-Control": "no-store"})


def _refuse(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"ok": False, "error": error, "detail": detail}, status=status)


def parse_identity(body: Any) -> tuple[str, str, list[str], int]:
    """(user, role, classrooms, ttl) from the page's request, or ValueError naming the field."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: {user, role, classrooms, ttl}")
    try:
        user = normalize_user_id(body.get("user"))
        user_room(user)
    except ValueError as exc:
        raise ValueError(f"user: {exc}") from None
    role = body.get("role", DEFAULT_ROLE)
    if role not in ROLES:
        raise ValueError(f"role: one of {', '.join(ROLES)}")
    raw = body.get("classrooms", [])
    if not isinstance(raw, list) or len(raw) > MAX_CLASSROOMS:
        raise ValueError(f"classrooms: a list of at most {MAX_CLASSROOMS} ids")
    classrooms: list[str] = []
    for item in raw:
        try:
            cid = normalize_user_id(item)
            classroom_room(cid)
        except ValueError as exc:
            raise ValueError(f"classrooms: {exc}") from None
        if cid not in classrooms:
            classrooms.append(cid)
    ttl = body.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"ttl: whole seconds from {MIN_TTL} to {MAX_TTL}")
    return user, role, classrooms, ttl


def script_json(value: Any) -> str:
    """JSON that can sit inside <script type="application/json"> without ending it early."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


_EXAMPLES: dict[str, dict[str, Any]] = {
    "achievement:unlocked": {"achievementId": "first-steps", "name": "First steps",
                             "description": "Completed a first exercise", "icon": "trophy",
                             "xpReward": 50},
    "rank:promoted": {"oldRank": {"name": "Bronze", "level": 1}, "newRank": {"name": "Silver", "level": 2},
                      "xpRequired": 500},
    "coins:earned": {"amount": 50, "reason": "exercise_completed", "newBalance": 1250},
    "notification:new": {"id": "n-1001", "userId": DEFAULT_USER, "type": "info", "title": "Welcome",
                         "message": "Your first notification", "data": {"link": "/courses/1"},
                         "read": False, "createdAt": "{now}"},
    "notification:read": {"notificationId": "n-1001", "readAt": "{now}"},
}


def examples(now: datetime) -> dict[str, Any]:
    """An example payload for every event of EVENT_SCHEMAS; date-times are `now`."""
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out: dict[str, Any] = {}
    for event, schema in EVENT_SCHEMAS.items():
        known = _EXAMPLES.get(event)
        out[event] = _stamped(known, stamp) if known is not None else _placeholder(schema.payload, stamp)
    return out


def _stamped(value: Any, stamp: str) -> Any:
    if value == "{now}":
        return stamp
    if isinstance(value, dict):
        return {k: _stamped(v, stamp) for k, v in value.items()}
    return value


def _placeholder(schema: ObjectSchema, stamp: str) -> dict[str, Any]:
    """A payload that passes `validate`, for an event added to the schemas after this module."""
    out: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.optional:
            continue
        if spec.nested is not None:
            out[spec.name] = _placeholder(spec.nested, stamp)
        else:
            out[spec.name] = {"string": spec.name, "integer": 1, "boolean": False, "datetime": stamp,
                              "object": {}}[spec.type]
    return out
