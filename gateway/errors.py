"""Every code a client can be told, in one table: what it means, whether the client should
reconnect, and the label it is counted under.

Three families reach a client:
- a refused handshake: CONNECT_ERROR `{message, data: {code}}` (socket.io-client does not
  retry a CONNECT_ERROR by itself: the application decides, e.g. after refreshing its token);
- a refused client event: the ack `{ok: false, error: code}`; the socket stays;
- a disconnect by the server. A Socket.IO DISCONNECT is terminal (socket.io-client does not
  reconnect); closing the transport instead makes it reconnect and recover. Each reason below
  says which one the gateway does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ClientCode:
    code: str  # what the client sees
    reconnect: bool  # should (and will) the client come back by itself
    metric: str  # the label value it is counted under
    message: str = ""  # CONNECT_ERROR's `message`, for handshake refusals

    def __str__(self) -> str:
        return self.code


# -- handshake refusals (CONNECT_ERROR) ------------------------------------------------------
TOKEN_MISSING: Final = ClientCode("token_missing", reconnect=False, metric="token_missing", message="unauthorized")
TOKEN_INVALID: Final = ClientCode("token_invalid", reconnect=False, metric="token_invalid", message="unauthorized")
TOKEN_EXPIRED: Final = ClientCode("token_expired", reconnect=False, metric="token_expired", message="unauthorized")
TOO_MANY_CONNECTIONS: Final = ClientCode("too_many_connections", reconnect=False, metric="too_many_connections",
                                         message="too_many_connections")

# -- client events refused (ack {ok: false, error}) ------------------------------------------
UNKNOWN_EVENT: Final = ClientCode("unknown_event", reconnect=False, metric="unknown_event")
RATE_LIMITED: Final = ClientCode("rate_limited", reconnect=False, metric="rate_limited")
INVALID_PAYLOAD: Final = ClientCode("invalid_payload", reconnect=False, metric="invalid_payload")

# -- disconnects by the server ---------------------------------------------------------------
# Terminal (a Socket.IO DISCONNECT): the client must not come back by itself.
KICKED: Final = ClientCode("kicked", reconnect=False, metric="kicked")
EXPIRED_WHILE_CONNECTED: Final = ClientCode("token_expired", reconnect=False, metric="token_expired")
FLOODING: Final = ClientCode("rate_limited", reconnect=False, metric="rate_limited")
# Transport closed: the client reconnects and recovers.
SLOW_CONSUMER: Final = ClientCode("slow_consumer", reconnect=True, metric="slow_consumer")
INVALID_PACKET: Final = ClientCode("invalid_packet", reconnect=True, metric="invalid_packet")
HANDSHAKE_TIMEOUT: Final = ClientCode("handshake_timeout", reconnect=True, metric="handshake_timeout")
DRAINING: Final = ClientCode("draining", reconnect=True, metric="draining")
CONNECT_FLOOD: Final = ClientCode("connect_flood", reconnect=True, metric="connect_flood")

HANDSHAKE_REFUSALS: Final = {c.code: c for c in (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED, TOO_MANY_CONNECTIONS)}
