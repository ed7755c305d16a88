"""The real `@socket.io/redis-emitter` (tests/e2e/driver/emitter.mjs), driven from pytest.

    with NodeEmitter(redis.url) as em:
        em.emit("coins:earned", {"amount": 1}, to=["user:42"])
        em.sockets_join(["quiz:9"], to=["classroom:7"])

Each call returns once what the emitter published is in Redis (the driver PINGs after it).
"""

from __future__ import annotations

import json
import subprocess
from types import TracebackType
from typing import Any, Self

from tests.support.node_env import DRIVER_DIR, ensure_node_modules, node_binary

TIMEOUT = 10.0


class NodeEmitter:
    def __init__(self, redis_url: str, key: str = "socket.io") -> None:
        self.redis_url = redis_url
        self.key = key
        self._proc: subprocess.Popen[str] | None = None
        self._next = 0

    def start(self) -> Self:
        ensure_node_modules()
        self._proc = subprocess.Popen(
            [node_binary(), str(DRIVER_DIR / "emitter.mjs"), self.redis_url, self.key],
            cwd=DRIVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        first = self._read()
        assert first.get("type") == "ready", first
        return self

    def _read(self) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            stderr = self._proc.stderr.read() if self._proc.stderr else ""
            raise AssertionError(f"emitter.mjs ended: {stderr[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _call(self, op: str, **fields: Any) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._next += 1
        self._proc.stdin.write(json.dumps({"id": self._next, "op": op, **fields}) + "\n")
        self._proc.stdin.flush()
        answer = self._read()
        assert answer == {"id": self._next, "ok": True}, answer

    def emit(self, event: str, *args: Any, to: list[str] | None = None,
             except_: list[str] | None = None, nsp: str = "/notifications") -> None:
        self._call("emit", event=event, args=list(args), to=to or [], nsp=nsp, **{"except": except_ or []})

    def sockets_join(self, rooms: list[str], *, to: list[str] | None = None,
                     except_: list[str] | None = None) -> None:
        self._call("socketsJoin", rooms=rooms, to=to or [], **{"except": except_ or []})

    def sockets_leave(self, rooms: list[str], *, to: list[str] | None = None,
                      except_: list[str] | None = None) -> None:
        self._call("socketsLeave", rooms=rooms, to=to or [], **{"except": except_ or []})

    def disconnect_sockets(self, *, to: list[str] | None = None, close: bool = False) -> None:
        self._call("disconnectSockets", to=to or [], close=close)

    def server_side_emit(self, *args: Any) -> None:
        self._call("serverSideEmit", args=list(args))

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
