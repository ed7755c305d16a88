"""The real `@socket.io/redis-emitter` (tests/e2e/driver/emitter.mjs), driven from pytest.

    with NodeEmitter(redis.url) as em:
        em.emit("coins:earned", {"amount": 1}, to=["user:42"])
        em.sockets_join(["quiz:9"], to=["classroom:7"])

Each call returns once what the emitter published is in Redis (the driver PINGs after it), or
fails after TIMEOUT s with the driver's stderr (a driver that cannot reach Redis retries, silent).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
from types import TracebackType
from typing import Any, Self

from tests.support.node_env import DRIVER_DIR, ensure_node_modules, node_binary

TIMEOUT = 10.0


class NodeEmitter:
    def __init__(self, redis_url: str, key: str = "socket.io") -> None:
        self.redis_url = redis_url
        self.key = key
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()  # stdout, "" at its end
        # a file, not a pipe: a pipe left unread could fill and stall the driver
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._reader: threading.Thread | None = None
        self._next = 0

    def start(self) -> Self:
        ensure_node_modules()
        self._proc = subprocess.Popen(
            [node_binary(), str(DRIVER_DIR / "emitter.mjs"), self.redis_url, self.key],
            cwd=DRIVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stdout, args=(self._proc.stdout,),
                                        name="node-emitter-stdout", daemon=True)
        self._reader.start()
        try:
            first = self._read()
            assert first.get("type") == "ready", first
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def _read_stdout(self, stdout: Any) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put("")

    def _read(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"emitter.mjs did not answer within {TIMEOUT} s: {self._stderr_tail()}") from None
        if not line:
            raise AssertionError(f"emitter.mjs ended: {self._stderr_tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _stderr_tail(self) -> str:
        fd = self._stderr.fileno()  # pread: the file offset is the driver's too
        size = os.fstat(fd).st_size
        return os.pread(fd, 2000, max(0, size - 2000)).decode(errors="replace")

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
            self._stderr.close()
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
