"""The Engine.IO server: python-engineio, with the costs of a large idle fleet taken out.

A browser on WebSocket (socket.io-client with `transports: ["websocket"]`, or the bench) opens
its session with one upgrade request. python-engineio runs that through its generic request path
(a WSGI-style environ of every header, query parsing for both transports, a queue and a ping
task per socket) and then checks every socket's heartbeat from one task that wakes once per
socket. Here:

- a new WebSocket session is opened directly: same checks (Engine.IO version, Origin,
  admission), same OPEN packet, same `connect` event to python-socketio, then the socket runs on
  the WebSocket (`transport.FastSocket.serve_websocket`); polling and upgrades from polling go
  through python-engineio unchanged;
- one `Heartbeat` schedules every socket's PING and checks its PONG deadline from a heap, ticking
  a few times a second whatever the number of sockets (idle sockets cost no CPU between pings);
- a socket's packet queue (`LiteQueue`) allocates nothing until a poll has to wait on it.

It also answers as Engine.IO v4 and its official test suite say where python-engineio does not
(tests/conformance): a missing or unknown `transport` and a method other than GET, POST and
OPTIONS get a 400, a POST is answered `ok`, and the OPEN packet of a polling session
advertises the ping interval to the millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from typing import Any

import engineio
import orjson
from aiohttp import web
from engineio import packet as eio_packet

from gateway.delivery.frames import ws_text_frame
from gateway.policy.admission import Admission
from gateway.sio.socket import FastSocket, WebSocketAdapter

HEARTBEAT_TICK = 0.25
log = logging.getLogger("gateway.sio.engine")


class LiteQueue:
    """The part of `asyncio.Queue` python-engineio uses, with nothing allocated while idle: its
    deque exists only while it holds packets (a WebSocket socket's queue is empty for life)."""

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: deque[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._unfinished += 1
        getters = self._getters
        while getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def peek(self) -> Any:
        """The next item, left in place; None when empty."""
        return self._items[0] if self._items else None

    def _pop(self) -> Any:
        items = self._items
        assert items
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._pop()

    async def get(self) -> Any:
        while not self._items:
            if self._getters is None:
                self._getters = deque()
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except BaseException:
                fut.cancel()
                if self._items and not fut.cancelled():
                    self.put_nowait(self._pop())  # pass the wake-up on
                raise
        return self._pop()

    def add_getter(self, fut: asyncio.Future[None]) -> None:
        """Wake `fut` on the next put (how `FastSocket.poll` waits, with its own release)."""
        if self._getters is None:
            self._getters = deque()
        self._getters.append(fut)

    def remove_getter(self, fut: asyncio.Future[None]) -> None:
        if self._getters is not None and fut in self._getters:
            self._getters.remove(fut)

    def task_done(self) -> None:
        self._unfinished = max(0, self._unfinished - 1)
        if self._unfinished == 0 and self._joiners:
            for fut in self._joiners:
                if not fut.done():
                    fut.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished > 0:
            fut = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(fut)
            await fut


class Heartbeat:
    """Engine.IO v4 heartbeat for every socket of the server: PING every `interval`, and a
    socket that has not answered within `timeout` is closed (as python-engineio would).

    Its tick also looks at the connection of every poll that waits for packets: aiohttp lets a
    handler run on when its client leaves, and a poll whose client left must end its session
    (`FastSocket.poll`). A look is one attribute read per waiting poll."""

    PING, CHECK = 0, 1

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._heap: list[tuple[float, int, int, FastSocket]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._polls: set[FastSocket] = set()

    def schedule(self, sock: FastSocket) -> None:
        heapq.heappush(self._heap, (time.monotonic() + self.interval, next(self._order), self.PING, sock))
        self._ensure_running()

    def watch_poll(self, sock: FastSocket) -> None:
        self._polls.add(sock)
        self._ensure_running()

    def unwatch_poll(self, sock: FastSocket) -> None:
        self._polls.discard(sock)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engineio-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._heap or self._polls:
            await asyncio.sleep(HEARTBEAT_TICK)
            try:
                self._sweep_polls()
                await self._beat(time.monotonic())
            except Exception:  # one socket's failure must not stop everyone's heartbeat
                log.exception("heartbeat failed; continuing")

    def _sweep_polls(self) -> None:
        abandoned = [sock for sock in self._polls if sock.poll_abandoned()]
        for sock in abandoned:
            self._polls.discard(sock)
            sock.wake_poll()  # it sees its connection gone and ends the session

    async def _beat(self, now: float) -> None:
        heap = self._heap
        if heap:
            while heap and heap[0][0] <= now:
                _, _, kind, sock = heapq.heappop(heap)
                if sock.closed or sock.closing:
                    continue
                if kind == self.PING:
                    sock.last_ping = time.time()
                    heapq.heappush(heap, (now + self.timeout, next(self._order), self.CHECK, sock))
                    await sock.send(eio_packet.Packet(eio_packet.PING))
                elif sock.last_ping is not None:  # the PING of this cycle was not answered
                    await sock.close(wait=False, abort=False, reason=sock.server.reason.PING_TIMEOUT)
                    sock.close_transport()


class GatewayEngineIO(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio with direct WebSocket writes, the direct WebSocket session opening and
    the shared heartbeat described in the module docstring, and admission control."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per server, not the driver module's shared dict: other servers in the process keep theirs.
        drivers: dict[str, Any] = getattr(self, "_async")  # noqa: B009 - untyped base attribute
        self._async = dict(drivers, websocket=WebSocketAdapter)
        self.start_service_task = False  # the Heartbeat replaces python-engineio's service task
        self.heartbeat = Heartbeat(self.ping_interval, self.ping_timeout)
        self.send_buffer_limit = 1 << 20
        self.admission: Admission | None = None
        self.allowed_origins: frozenset[str] | None = None  # None: any
        self.bad_packet_hook: Any = None
        self._corked: list[FastSocket] = []
        self._in_batch = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # A new session's OPEN packet after its sid (`open_frame`): the same for every session.
        self._open_tail = orjson.dumps({"upgrades": [], "pingTimeout": round(self.ping_timeout * 1000),
                                        "pingInterval": round(self.ping_interval * 1000),
                                        "maxPayload": self.max_http_buffer_size})[1:]

    def open_frame(self, sid: str) -> bytes:
        """The WebSocket frame of a new session's Engine.IO OPEN packet: orjson's encoding of
        {"sid": sid, "upgrades": [], ...}, byte for byte (a generated sid needs no escaping)."""
        return ws_text_frame(b'0{"sid":"' + sid.encode() + b'",' + self._open_tail)

    def attach(self, app: web.Application, engineio_path: str = "engine.io") -> None:
        """python-engineio's routes (GET, POST, OPTIONS), and every other method to the same
        handler: Engine.IO refuses a bad method with a 400, where aiohttp's router says 405."""
        super().attach(app, engineio_path)
        app.router.add_route("*", f"/{engineio_path.strip('/')}/", self.handle_request)

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background, holding it until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cork(self, sock: FastSocket) -> None:
        """`sock` holds frames: write them all at the end of this batch (a read from the bus,
        see `begin_batch`), or of this loop turn."""
        corked = self._corked
        corked.append(sock)
        if len(corked) == 1 and not self._in_batch:
            asyncio.get_running_loop().call_soon(self._uncork)

    def begin_batch(self) -> None:
        """What the bus delivers from here to `end_batch` is written when it ends, without a
        loop turn of its own for the writes (at low rates, most reads bring one message)."""
        self._in_batch = True

    def end_batch(self) -> None:
        self._in_batch = False
        if self._corked:
            self._uncork()

    def _uncork(self) -> None:
        corked, self._corked = self._corked, []
        for sock in corked:
            sock.flush()

    def create_queue(self, *args: Any, **kwargs: Any) -> LiteQueue:
        return LiteQueue()

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        request: web.Request = args[0]
        broken = self._protocol_refusal(request)
        if broken is not None:
            return await self._refuse(request, *broken)
        admission = self.admission
        if admission is not None:
            refused = admission.refusal(request)
            if refused is not None:
                return web.json_response(refused.body(), status=refused.status, headers=refused.headers())
        query = request.query
        if (query.get("transport") == "websocket" and "sid" not in query and request.method == "GET"
                and request.headers.get("Upgrade", "").lower() == "websocket"):
            return await self._open_websocket(request, query.get("EIO"))
        return await super().handle_request(*args, **kwargs)

    def _protocol_refusal(self, request: web.Request) -> tuple[int, str] | None:
        """What Engine.IO refuses before python-engineio looks (engine.io's codes and messages):
        python-engineio takes a missing `transport` for polling, answers a bad method 405, and
        fails with a 500 on a POST to a session that has just ended."""
        method = request.method
        if method == "OPTIONS":  # a CORS preflight: python-engineio answers it
            return None
        if method not in {"GET", "POST"}:
            return 2, "Bad request method"
        query = request.query
        if query.get("transport") not in self.transports:
            return 0, "Transport unknown"
        sid = query.get("sid")
        if sid is not None:
            sock = self.sockets.get(sid)
            if sock is not None and sock.closed:
                return 1, "Session ID unknown"
        return None

    async def _refuse(self, request: web.Request, code: int, message: str) -> Any:
        environ = self._async["translate_request"](request)
        response = {"status": "400 BAD REQUEST", "headers": [("Content-Type", "application/json")],
                    "response": orjson.dumps({"code": code, "message": message})}
        return await self._make_response(response, environ)

    def _ok(self, packets: list[eio_packet.Packet] | None = None, headers: list[tuple[str, str]] | None = None,
            jsonp_index: int | None = None) -> dict[str, Any]:
        """python-engineio's, with a POST answered `ok` (engine.io's answer; python-engineio
        says `OK`)."""
        response: dict[str, Any] = super()._ok(packets, headers, jsonp_index)
        if packets is None:
            response["response"] = b"ok"
        return response

    async def _open_websocket(self, request: web.Request, eio_version: str | None) -> web.StreamResponse:
        if eio_version != "4":
            return web.json_response({"code": 5, "message": "Unsupported protocol version"}, status=400)
        origin = request.headers.get("Origin")
        if origin and self.allowed_origins is not None and origin not in self.allowed_origins:
            return web.json_response({"code": 3, "message": f"{origin} is not an accepted origin."}, status=400)
        sid = self.generate_id()
        sock = FastSocket(self, sid)
        self.sockets[sid] = sock
        environ = {"HTTP_AUTHORIZATION": request.headers.get("Authorization"), "REMOTE_ADDR": request.remote}
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            self.sockets.pop(sid, None)
            return web.json_response({"code": 4, "message": "Forbidden"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=self.max_http_buffer_size, compress=False)
        try:
            await ws.prepare(request)
        except (ConnectionError, OSError, RuntimeError):
            # the client left during the upgrade (uvloop says so with a RuntimeError)
            self.sockets.pop(sid, None)
            await self._trigger_event("disconnect", sid, self.reason.TRANSPORT_CLOSE, run_async=False)
            return web.Response(status=400)
        writer = ws._writer
        if writer is not None and not writer.transport.is_closing():
            writer.transport.write(self.open_frame(sid))
        sock.schedule_ping()
        try:
            await sock.serve_websocket(ws)
        finally:
            if sock.closed:
                self.sockets.pop(sid, None)
        return ws

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            sock = self.sockets.get(args[0])
            if sock is not None and not isinstance(sock, FastSocket):
                sock.__class__ = FastSocket  # a polling session: python-engineio made it
                opening = sock.queue.peek()
                if opening is not None and opening.packet_type == eio_packet.OPEN and isinstance(opening.data, dict):
                    # python-engineio advertises whole seconds (int(seconds) * 1000): 1500 ms as 1000
                    opening.data["pingInterval"] = round(self.ping_interval * 1000)
        return await super()._trigger_event(event, *args, **kwargs)

    def on_bad_packet(self, sock: FastSocket, reason: str) -> None:
        if self.bad_packet_hook is not None:
            self.bad_packet_hook(sock, reason)

