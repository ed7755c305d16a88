"""The namespace's CONNECT, as one sequence that ends in `Accepted` or `Refused`.

token → identity (`policy.auth`) → the user's socket limit (`policy.admission`) → a recovered
session if the client asks for one and it can be restored in full, else a fresh one → rooms
attached (subscriptions confirmed, history read) → the session record saved. The Socket.IO layer
writes the reply: CONNECT for `Accepted` (then `DeliveryCore.accepted` flushes what waited),
CONNECT_ERROR for `Refused`. Nothing here knows python-socketio; python-socketio's own
bookkeeping of the sid is done through `SidBook`, before the first await, so a transport that
closes while Redis is asked is seen as the socket going away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import errors
from gateway.delivery.attach import HistoryLost
from gateway.delivery.core import DeliveryCore
from gateway.delivery.ports import Counters, SocketWriter
from gateway.delivery.recovery import RECOVERED, Recovery, Restorable
from gateway.delivery.registry import Conn
from gateway.errors import ClientCode
from gateway.policy.auth import Authenticator, AuthError, extract_token
from gateway.policy.rooms import Identity, may_join, rooms_for
from publisher.envelope import EVERYONE, Position

log = logging.getLogger("gateway.delivery.connect")


@dataclass(frozen=True, slots=True)
class Accepted:
    conn: Conn
    recovered: bool


@dataclass(frozen=True, slots=True)
class Refused:
    code: ClientCode


class SidBook(Protocol):
    """python-socketio's sid bookkeeping (the server's manager)."""

    def enter(self, sid: str, eio_sid: str) -> None: ...

    def leave(self, sid: str) -> None: ...


class UserLimit(Protocol):
    """The per-user socket cap (`policy.admission.Admission`)."""

    def user_may_connect(self, user_id: str, current: int) -> bool: ...

    def connect_done(self, user_id: str) -> None: ...


class HandshakeCounters(Counters, Protocol):
    def handshake(self, outcome: str) -> None: ...

    def recovery(self, outcome: str) -> None: ...


class ConnectSequence:
    def __init__(self, core: DeliveryCore, auth: Authenticator, limits: UserLimit, recovery: Recovery,
                 counters: HandshakeCounters, book: SidBook, *, new_sid: Callable[[], str]) -> None:
        self._core = core
        self._auth = auth
        self._limits = limits
        self._recovery = recovery
        self._counters = counters
        self._book = book
        self._new_sid = new_sid

    async def run(self, eio_sid: str, socket: SocketWriter, auth: Any,
                  environ: Mapping[str, Any]) -> Accepted | Refused | None:
        """The outcome of a CONNECT; None when the transport went away meanwhile."""
        try:
            identity = self._auth.authenticate(extract_token(auth, environ.get("HTTP_AUTHORIZATION")))
        except AuthError as exc:
            log.info("handshake refused", extra={"code": exc.code, "reason": exc.detail})
            return self._refuse(errors.HANDSHAKE_REFUSALS[exc.code])
        user = identity.user_id
        if not self._limits.user_may_connect(user, self._core.user_sockets(user)):
            return self._refuse(errors.TOO_MANY_CONNECTIONS)
        try:
            restorable = await self._restorable(identity, auth)
            if restorable is not None:
                try:
                    conn = await self._restore(eio_sid, socket, identity, restorable)
                except HistoryLost as exc:  # a new session, and the client is told: recovered false
                    log.info("recovery refused: %s", exc, extra={"user_id": user})
                    self._counters.recovery("history_lost")
                else:
                    return self._accepted(conn, recovered=True) if conn is not None else None
            conn = await self._fresh(eio_sid, socket, identity)
            return self._accepted(conn, recovered=False) if conn is not None else None
        finally:
            self._limits.connect_done(user)  # counted by the registry from now on

    def _refuse(self, code: ClientCode) -> Refused:
        self._counters.handshake(code.metric)
        return Refused(code)

    def _accepted(self, conn: Conn, *, recovered: bool) -> Accepted:
        if recovered:
            self._counters.recovery(RECOVERED)
        self._counters.handshake("recovered" if recovered else "ok")
        return Accepted(conn, recovered)

    async def _restorable(self, identity: Identity, auth: Any) -> Restorable | None:
        if not self._recovery.enabled or not isinstance(auth, dict) or auth.get("pid") is None:
            return None
        restorable, outcome = await self._recovery.find(identity, auth.get("pid"), auth.get("offset"))
        if restorable is None:
            self._counters.recovery(outcome)
        return restorable

    def _register(self, sid: str, eio_sid: str, socket: SocketWriter, identity: Identity,
                  pid: str | None) -> Conn:
        self._book.enter(sid, eio_sid)
        conn = Conn(sid, eio_sid, identity, socket, pid)
        expires = identity.exp + self._auth.leeway if identity.exp is not None else None
        self._core.register(conn, expires)
        return conn

    def _still_there(self, conn: Conn) -> bool:
        """The transport may have gone while Redis was asked."""
        if conn.eio.closed or self._core.get(conn.sid) is not conn:
            self._unregister(conn)
            return False
        return True

    def _unregister(self, conn: Conn) -> None:
        if self._core.get(conn.sid) is conn:
            self._core.forget(conn.sid)
            self._book.leave(conn.sid)
        elif self._core.get(conn.sid) is None:
            self._book.leave(conn.sid)  # never another connection's: a concurrent restore of the same pid

    async def _fresh(self, eio_sid: str, socket: SocketWriter, identity: Identity) -> Conn | None:
        pid = self._recovery.new_pid() if self._recovery.enabled else None
        conn = self._register(self._new_sid(), eio_sid, socket, identity, pid)
        starts = await self._core.attach_rooms(conn, rooms_for(identity))
        if not self._still_there(conn):
            return None
        if pid is not None:
            if starts is None:  # the bus cannot say where it starts: no session to recover
                conn.pid = None
            else:
                self._recovery.save(pid, conn.sid, identity, list(conn.rooms), starts)
        return conn

    async def _restore(self, eio_sid: str, socket: SocketWriter, identity: Identity,
                       restorable: Restorable) -> Conn | None:
        """The session restored in full; None when the transport went away meanwhile.

        Its rooms are what the new token and the room policy allow: of its rooms, those the new
        token grants and, of the rooms joined after the session began (by a producer, or the
        API), those the policy allows this identity; and the rooms the new token grants that the
        session never had (a room a producer made it leave stays left). A room left while away is
        replayed up to the leave if the policy allows this identity in it. A token downgraded
        since (role lowered, classrooms removed) loses the rooms it no longer grants, and a room
        no producer call may grant (another user's, `admin:all` for a student) is never rejoined,
        nor replayed.

        Raises HistoryLost when it cannot be restored in full."""
        stale = self._core.get(restorable.sid)
        if stale is not None:  # the old transport here has not noticed it is dead yet
            stale.pid = None
            self._core.forget(stale.sid)
            stale.eio.close_transport()
        granted = rooms_for(identity)
        spans = [(room, start, end) for room, start, end in restorable.spans
                 if room == EVERYONE or room in granted
                 or ((end is not None or room in restorable.record.extra) and may_join(identity, room))]
        dropped = len(restorable.spans) - len(spans)
        if dropped:
            log.info("recovery: rooms the new token does not grant are dropped",
                     extra={"user_id": identity.user_id, "rooms": dropped})
        conn = self._register(restorable.sid, eio_sid, socket, identity, restorable.pid)
        try:
            await self._core.recover_rooms(conn, spans, restorable.offset)
        except HistoryLost:
            self._unregister(conn)
            raise
        if not self._still_there(conn):
            return None
        left = set(restorable.record.left)  # a room a producer made it leave stays left
        fresh = [room for room in granted if room not in conn.rooms and room not in left]
        starts_now: dict[str, Position] = {}
        if fresh:  # the new token grants rooms the session did not have: from now on
            started = await self._core.attach_rooms(conn, fresh) or {}
            starts_now = {room: at for room, at in started.items() if room in fresh}
        if not self._still_there(conn):
            return None
        self._recovery.save_restored(restorable, conn, identity, starts_now)
        return conn
