"""The CONNECT reply that gateway/sio/server.py writes as text is what python-socketio's Packet
encodes it to, byte for byte, with and without a recovery pid (socket.io-client parses it)."""

from __future__ import annotations

import orjson
import pytest
from socketio import packet as sio_packet

from gateway.sio.packets import FastPacket
from gateway.sio.server import _CONNECT_REPLY
from publisher.envelope import NAMESPACE


@pytest.mark.parametrize("reply", [{"sid": "AbCdEfGhIjKlMnOpQrSt"},
                                   {"sid": "AbCdEfGhIjKlMnOpQrSt", "pid": "u-Zx_09aBcDeFgHiJkLmNo"}])
def test_connect_reply_text_is_python_socketio_encoding(reply: dict[str, str]) -> None:
    expected = FastPacket(sio_packet.CONNECT, reply, namespace=NAMESPACE).encode()
    assert _CONNECT_REPLY + orjson.dumps(reply).decode() == expected
    assert expected.startswith("0/notifications,{")
