"""A deliberately minimal WebSocket and Engine.IO/Socket.IO client on a plain socket, for
attackers: it sends exactly the bytes it is told to (garbage, fragments, huge frames), reads
only when asked (so it can stop reading), and tells "the server closed the connection" apart
from "nothing arrived yet".
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
from typing import Any

import orjson

NS = "/notifications"
WS_PATH = "/socket.io/?EIO=4&transport=websocket"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the connection (FIN, RST or a close frame)."""


class RawWS:
    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(leftover)
        self.closed = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def connect(cls, port: int, path: str = WS_PATH, *, host: str = "127.0.0.1",
                headers: dict[str, str] | None = None, rcvbuf: int | None = None,
                timeout: float = 5.0) -> RawWS:
        """Open a TCP connection and upgrade it; raises `Refused` with the HTTP status if the
        server answers anything but 101."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise Refused(0, head.decode("latin-1"))
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            sock.close()
            raise Refused(status, head.decode("latin-1"))
        return cls(sock, rest)

    def eio_open(self, timeout: float = 5.0) -> dict[str, Any]:
        """Read the Engine.IO OPEN packet."""
        text = self.recv_text(timeout)
        assert text.startswith("0{"), text
        opening: dict[str, Any] = orjson.loads(text[1:])
        return opening

    def sio_connect(self, auth: Any, timeout: float = 5.0) -> str:
        """Send a Socket.IO CONNECT for /notifications with `auth` (JSON) and return the reply
        packet's text (`40/notifications,{...}` or `44/notifications,{...}`)."""
        self.send_text(f"40{NS}," + orjson.dumps(auth).decode())
        return self.recv_text(timeout)

    # -- writing -----------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        head = bytearray([(0x80 if fin else 0) | opcode])
        n = len(payload)
        bit = 0x80 if mask else 0
        if n < 126:
            head.append(bit | n)
        elif n < 65536:
            head.append(bit | 126)
            head += struct.pack("!H", n)
        else:
            head.append(bit | 127)
            head += struct.pack("!Q", n)
        if mask:
            key = os.urandom(4)
            head += key
            payload = _mask(payload, key)
        self.sock.sendall(bytes(head) + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def try_send_text(self, text: str) -> bool:
        """Send unless the connection is gone; False when it is."""
        try:
            self.send_text(text)
        except OSError:
            self.closed = True
            return False
        return True

    # -- reading -----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(262144)
        except TimeoutError:
            raise
        except OSError as exc:
            self.closed = True
            raise Closed(str(exc)) from None
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self.buf += chunk

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame (opcode, payload); TimeoutError if none in time; Closed when the
        server is gone or sent a close frame."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame is not None:
                opcode, payload = frame
                if opcode == CLOSE:
                    if not self.closed:  # answered as a browser does: the server then ends the TCP connection
                        with contextlib.suppress(OSError):
                            self.send_frame(CLOSE, payload[:2])
                    self.closed = True
                    raise Closed(f"close frame {payload[:2].hex()}")
                if opcode == PING:
                    with contextlib.suppress(OSError):
                        self.send_frame(PONG, payload)
                    continue
                return opcode, payload
            self._fill(deadline)

    def recv_text(self, timeout: float = 5.0) -> str:
        """The next Engine.IO text that is not a PING (those are answered with PONG)."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.recv_frame(max(0.0, deadline - time.monotonic()) or 0.001)
            text = payload.decode("utf-8", "replace") if opcode == TEXT else f"<binary {len(payload)}>"
            if text == "2":
                with contextlib.suppress(OSError):
                    self.send_text("3")
                continue
            return text

    def wait_closed(self, timeout: float) -> bool:
        """Read (and drop) everything until the server closes; True if it did within timeout."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv_frame(max(0.001, deadline - time.monotonic()))
        except Closed:
            return True
        except TimeoutError:
            return False

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        opcode = buf[0] & 0x0F
        masked = buf[1] & 0x80
        n = buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from("!Q", buf, 2)[0]
            pos = 10
        key = b""
        if masked:
            key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        return opcode, _mask(payload, key) if masked else payload

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Refused(Exception):
    def __init__(self, status: int, head: str) -> None:
        super().__init__(f"HTTP {status}: {head[:300]}")
        self.status = status
        self.head = head


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def connected(port: int, token: str, **kwargs: Any) -> tuple[RawWS, str]:
    """A raw WebSocket that completed the Engine.IO and Socket.IO handshakes; (ws, sid)."""
    ws = RawWS.connect(port, **kwargs)
    ws.eio_open()
    reply = ws.sio_connect({"token": token})
    assert reply.startswith(f"40{NS},{{"), reply
    return ws, str(orjson.loads(reply[len(f"40{NS},"):])["sid"])
