"""One shard's subscriber connection (`_Shard`): one node, every channel of ours it serves.

What a connection does on its own, apart from which channels it should hold (`channels.py`
decides, `topology.py` moves them): connect (TLS, AUTH, CLIENT SETNAME; a single Redis is
asked whether it is a cluster node, a Sentinel's whether it is a primary), read its replies
(`RespProtocol`), send SSUBSCRIBE and SUNSUBSCRIBE and keep what is confirmed or in flight,
and stay up: a supervisor reconnects it alone, with capped, jittered backoff, and runs its
self-check (`selfcheck.py`) while it is up.

Redis answers the commands of one connection in order, and pub/sub pushes (`smessage`, a
`sunsubscribe` we did not ask for) come in between: a FIFO of the commands outstanding says
which command each reply answers. So a `-MOVED` error is known to refuse the SSUBSCRIBE of
one channel, and a `sunsubscribe` with no SUNSUBSCRIBE of ours at the head of the FIFO is
Redis dropping the channel (its slot moved away). Both are handed to the owner
(`ShardedChannels`), which decides what follows; so are confirmations and the connection's
loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final

import hiredis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from gateway.bus.endpoint import Endpoint, resolve, tls_context
from gateway.bus.resp import RespProtocol, pack
from gateway.bus.shards import selfcheck, tuning
from publisher.cluster import NodeAddress

if TYPE_CHECKING:
    from gateway.bus.shards.channels import ShardedChannels

log = logging.getLogger("gateway.bus")

# What each command outstanding on a connection was, in order.
_SSUB: Final = 0
_SUNSUB: Final = 1
_CALL: Final = 2

Node = Hashable  # NodeAddress (a cluster's primary) or the Endpoint of a single Redis


class _Refused(ConnectionError):
    """The node cannot serve us as configured (a plain URL at a cluster node...)."""


def _shard_name(node: Node) -> str:
    """host:port (a single Redis: its address, socket or Sentinel service); never credentials."""
    if isinstance(node, NodeAddress):
        return str(node)
    assert isinstance(node, Endpoint)
    if node.scheme == "unix":
        return f"unix:{node.path}"
    if node.sentinels:
        return node.describe()
    return str(NodeAddress(node.host, node.port))


def _node_tls(node: NodeAddress) -> ssl.SSLContext | None:
    """An SSL context from a cluster node's ssl_* options, as redis-py reads them."""
    if not node.tls:
        return None
    options = dict(node.tls_options)
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    requirement = options.get("ssl_cert_reqs", "required")
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and requirement == "required"
    if requirement == "none":
        context.verify_mode = ssl.CERT_NONE
    elif requirement == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


class _Shard:
    """One node's subscriber connection: its supervisor, its outstanding commands, its reads."""

    def __init__(self, owner: ShardedChannels, node: Node) -> None:
        self.owner = owner
        self.node = node
        self.name = _shard_name(node)
        self.slots: set[int] = set()  # the slots whose desired channels are held here
        self.confirmed: set[bytes] = set()  # on this connection
        self.sent: set[bytes] = set()  # SSUBSCRIBE outstanding on this connection
        self.fifo: deque[tuple[int, Any]] = deque()
        self.queue: list[bytes] = []  # to SSUBSCRIBE at the end of this loop turn
        self.proto: RespProtocol | None = None
        self.writable = False  # connected and authenticated: SSUBSCRIBEs may be sent
        self.settled = False  # what was sent at connection is answered
        self.failing = False  # the last attempt failed: down until a connection succeeds
        self.probe: bytes | None = None
        self.probe_seen = asyncio.Event()
        self.command: redis.asyncio.Redis | None = None  # a single Redis: to publish the probe
        self.task: asyncio.Task[None] | None = None
        self.lost: list[bytes] = []  # during a read: said at its end
        self.restored: list[bytes] = []
        self.on_message = owner.sink.on_message
        self.batch_begin = owner.sink.begin_batch

    @property
    def ready(self) -> bool:
        return self.writable and self.settled

    def __repr__(self) -> str:
        return f"<shard {self.name} ready={self.ready} slots={len(self.slots)}>"

    # -- reading (RespProtocol's owner) -----------------------------------------------------

    def on_reply(self, reply: Any) -> None:
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == b"smessage":
                if reply[1] == self.probe:
                    self.probe_seen.set()
                else:
                    self.on_message(reply[2])
                return
            if kind == b"ssubscribe":
                channel = reply[1]
                self._answered(_SSUB, channel)
                self.owner._confirmed(self, channel)
                return
            if kind == b"sunsubscribe":
                channel = reply[1]
                fifo = self.fifo
                if fifo and fifo[0][0] == _SUNSUB and fifo[0][1] == channel:
                    fifo.popleft()
                else:  # not ours: Redis dropped the channel (its slot moved away)
                    self.owner._pushed_out(self, channel)
                return
            if kind == b"pong":
                reply = b"PONG"
        if not self.fifo:
            log.warning("bus shard %s: a reply nobody asked for: %.100r", self.name, reply,
                        extra={"shard": self.name})
            return
        what, arg = self.fifo.popleft()
        if what == _CALL:
            if not arg.done():
                if isinstance(reply, hiredis.ReplyError):
                    arg.set_exception(ResponseError(str(reply)))
                else:
                    arg.set_result(reply)
        elif what == _SSUB:
            self.sent.discard(arg)
            if isinstance(reply, hiredis.ReplyError):
                self.owner._refused(self, arg, str(reply))
            else:
                log.warning("bus shard %s: SSUBSCRIBE answered %.100r", self.name, reply, extra={"shard": self.name})
        # _SUNSUB answered by an error (MOVED: the slot had left): nothing to undo

    def _answered(self, what: int, channel: bytes) -> None:
        fifo = self.fifo
        if fifo and fifo[0][0] == what and fifo[0][1] == channel:
            fifo.popleft()
            return
        for i, entry in enumerate(fifo):
            if entry[0] == what and entry[1] == channel:
                del fifo[i]
                return

    def batch_end(self) -> None:
        try:
            self.owner.sink.end_batch()
        finally:
            self.owner._after_read(self)

    def failed(self, where: str) -> None:
        self.owner._failures.failed(where, shard=self.name)

    # -- writing ----------------------------------------------------------------------------

    def call(self, *args: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto = self.proto
        if proto is None or not proto.write(pack(*args)):
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self.fifo.append((_CALL, fut))
        return fut

    def ssubscribe(self, channels: Iterable[bytes]) -> None:
        proto = self.proto
        if proto is None or not self.writable:
            return
        out = []
        for channel in channels:
            out.append(pack(b"SSUBSCRIBE", channel))
            self.fifo.append((_SSUB, channel))
            self.sent.add(channel)
        if out:
            proto.write(b"".join(out))

    def sunsubscribe(self, channel: bytes) -> None:
        self.confirmed.discard(channel)
        self.sent.discard(channel)
        proto = self.proto
        if proto is not None and self.writable and proto.write(pack(b"SUNSUBSCRIBE", channel)):
            self.fifo.append((_SUNSUB, channel))

    def _on_lost(self, _: object) -> None:
        for what, arg in self.fifo:
            if what == _CALL and not arg.done():
                arg.set_exception(ConnectionError("connection lost"))

    # -- supervision ------------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._supervise(), name=f"bus-shard {self.name}")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.owner._shard_down(self, closing=True)
        await self._close_command()

    async def _close_command(self) -> None:
        command, self.command = self.command, None
        if command is not None:
            with contextlib.suppress(RedisError, OSError):
                await command.aclose()

    async def _supervise(self) -> None:
        delay = tuning.BACKOFF_START
        connections = 0
        try:
            while True:
                try:
                    await self._connect()
                    self.owner._shard_up(self)
                    # replies come in order: once this one is in, every SSUBSCRIBE sent is answered
                    await asyncio.wait_for(self.call(b"PING"), tuning.SUBSCRIBE_TIMEOUT)
                    self.settled = True
                    self.failing = False
                    connections += 1
                    if connections > 1:
                        self.owner.count("reconnect")
                    delay = tuning.BACKOFF_START
                    log.info("bus shard %s connected (%d channels)", self.name, len(self.confirmed),
                             extra={"shard": self.name})
                    self.owner._shard_settled(self)
                    await selfcheck.watch(self)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    self.owner._log_failure(self, "no answer in time", delay)
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    self.owner._log_failure(self, str(exc) or type(exc).__name__, delay)
                self.failing = True
                self.owner._shard_down(self)
                await self._close_command()
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, tuning.BACKOFF_CAP)
        finally:
            if self.proto is not None and self.proto.transport is not None:
                self.proto.transport.abort()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        node = self.node
        if isinstance(node, NodeAddress):
            host, port, path = node.host, node.port, ""
            context = self.owner._tls(node)
            username, password = node.username, node.password
        else:
            assert isinstance(node, Endpoint)
            path = node.path if node.scheme == "unix" else ""
            host, port = await resolve(node) if not path else ("", 0)
            context = tls_context(node)
            username, password = node.username, node.password
        if path:
            _, proto = await asyncio.wait_for(
                loop.create_unix_connection(lambda: RespProtocol(self), path), tuning.REPLY_TIMEOUT)
        else:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: RespProtocol(self), host, port, ssl=context,
                                       server_hostname=host if context is not None else None),
                tuning.REPLY_TIMEOUT)
        self.proto = proto
        self.fifo.clear()
        proto.lost.add_done_callback(self._on_lost)
        auth = None
        if password:
            auth = self.call(b"AUTH", username.encode(), password.encode()) if username else \
                self.call(b"AUTH", password.encode())
        named = self.call(b"CLIENT", b"SETNAME", self.owner.client_name)
        single = not isinstance(node, NodeAddress)
        info = self.call(b"INFO", b"cluster") if single else None
        sentinel = isinstance(node, Endpoint) and bool(node.sentinels)
        role = self.call(b"ROLE") if sentinel else None
        if auth is not None:
            try:
                await asyncio.wait_for(auth, tuning.REPLY_TIMEOUT)
            except ResponseError as exc:
                raise _Refused(f"AUTH refused: {exc}") from None
        with contextlib.suppress(ResponseError):  # a managed Redis may refuse CLIENT SETNAME
            await asyncio.wait_for(named, tuning.REPLY_TIMEOUT)
        if info is not None:
            try:
                text = await asyncio.wait_for(info, tuning.REPLY_TIMEOUT)
            except ResponseError:  # INFO renamed or refused: a MOVED would tell
                text = b""
            if isinstance(text, bytes) and b"cluster_enabled:1" in text:
                self.owner._cluster_node(self)
                raise _Refused(f"{self.name} is a Redis Cluster node: use a redis+cluster:// URL")
        if role is not None:
            reply = await asyncio.wait_for(role, tuning.REPLY_TIMEOUT)
            if not reply or reply[0] != b"master":
                raise ConnectionError("the sentinels named a Redis that is not a primary (failover under way)")
        if single:
            self.command = redis.asyncio.Redis(
                host=host or "localhost", port=port or 6379, unix_socket_path=path or None,
                username=username, password=password, ssl=context is not None,
                socket_timeout=tuning.REPLY_TIMEOUT, socket_connect_timeout=tuning.REPLY_TIMEOUT,
                retry=Retry(NoBackoff(), 0))
