"""WebSocket connections accepted below aiohttp, on the same listening socket.

aiohttp's per-request machinery (its request handler and task, the request and its headers,
`WebSocketResponse`, the handler's coroutine chain) would live as long as each WebSocket. Here a
connection's first request head is read by `protocol.AcceptProtocol`: an Engine.IO WebSocket
request is answered natively (`handshake`) and its frames read and written directly (`frames`);
everything else is handed to aiohttp with the bytes already read. `docs/performance.md`, "The
accept path", has the measurements behind the choice of hand-written parsing.

This package knows HTTP and RFC 6455 only; what a request means to Engine.IO is decided by its
`Acceptor` (`gateway/sio/native.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.ws.protocol import Acceptor, AcceptProtocol

__all__ = ["listen"]


async def listen(acceptor: Acceptor, http: Callable[[], asyncio.Protocol], host: str, port: int, *,
                 head_timeout: float, backlog: int = 4096) -> asyncio.Server:
    """Listen on host:port; WebSocket sessions go to `acceptor`, everything else to `http`
    (aiohttp's `web.Server`, a protocol factory)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: AcceptProtocol(acceptor, http, head_timeout), host, port,
                                    reuse_address=True, backlog=backlog)
