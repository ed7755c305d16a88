"""The real `socket.io-client` v4, driven from plain (sync) pytest tests.

`NodeClients` starts one Node process (tests/e2e/driver/client.mjs) that holds any number of
named sockets. Commands go to it as JSON lines on stdin; everything the client sees comes back
as JSON lines on stdout, read by a thread into a timeline of records (see client.mjs for their
shape). Every wait is bounded, and a failed wait says what was received instead, with the
driver's stderr.

    with NodeClients() as clients:
        clients.connect("alice", gw.url + "/notifications", token=tok, transports=["websocket"])
        assert clients.wait_connected("alice")["type"] == "connect"
        clients.emit("alice", "subscribe:notifications")  # -> {"ok": True, "rooms": [...]}
        [ev] = clients.wait_events("alice", "coins:earned", 1)
        ev.payload, ev.offset, ev.recovered

Connection outcomes are read with a cursor per socket: `connect()` and `close_transport()` set
it to "now", and `wait_connected` / `wait_disconnected` / `wait_record` return the first matching
record after it and move it there. So after a drop caused elsewhere (a replica drained), calling
`wait_connected` again waits for the next reconnection, not the first connection.

Note, from the real client: on a recovered reconnection, socket.io-client emits the replayed
events *before* its `connect` event whenever the server sends them before the CONNECT packet
(the Node server does); their `recovered` flag is already true. Do not rely on the order of
a `connect` record and the replayed events; rely on `recovered` and on the events' order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tests.support.node_env import DRIVER_DIR, ensure_node_modules, node_binary

Record = dict[str, Any]
T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
# Generous: a command only waits for the driver's event loop (an ack adds its own timeout).
COMMAND_TIMEOUT = 10.0


class HarnessError(RuntimeError):
    """The driver process misbehaved: it died, refused a command, or reported an internal error."""


class AckTimeout(AssertionError):
    """An emit asked for an acknowledgement and none came in time."""


@dataclass(frozen=True, slots=True)
class Received:
    """One event as socket.io-client delivered it to `socket.onAny`."""

    event: str
    args: list[Any]  # all of them, the trailing offset string included when there is one
    offset: str | None  # what the client keeps as `_lastOffset` after this event, if anything
    recovered: bool  # the socket's `recovered` flag when the event was delivered
    t: float  # ms, the driver's performance.now() (monotonic)
    seq: int  # position in the driver's timeline

    @property
    def data_args(self) -> list[Any]:
        """The arguments the server emitted, without the recovery offset."""
        return self.args[:-1] if self.offset is not None else list(self.args)

    @property
    def payload(self) -> Any:
        """The first argument the server emitted (None when there was none)."""
        data = self.data_args
        return data[0] if data else None

    @classmethod
    def from_record(cls, record: Record) -> Received:
        return cls(
            event=record["event"], args=list(record["args"]), offset=record.get("offset"),
            recovered=bool(record.get("recovered")), t=float(record["t"]), seq=int(record["seq"]),
        )


def _is_outcome(record: Record) -> bool:
    kind = record["type"]
    return (
        kind == "connect"
        or (kind == "connect_error" and not record.get("retrying"))
        or kind == "reconnect_failed"
    )


class NodeClients:
    """One client.mjs process and its named sockets. Use as a context manager."""

    def __init__(
        self,
        *,
        driver_dir: Path = DRIVER_DIR,
        default_opts: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.driver_dir = driver_dir
        self.default_opts = dict(default_opts or {})
        self.env = env
        self.versions: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._records: list[Record] = []
        self._by_name: dict[str, list[Record]] = {}
        self._replies: dict[int, Record] = {}
        self._problems: list[Record] = []  # driver-side errors and unparsable output
        self._cursor: dict[str, int] = {}
        self._stderr: deque[str] = deque(maxlen=400)
        self._eof = False
        self._next_id = 0
        self._threads: list[threading.Thread] = []

    # -- process ------------------------------------------------------------------------------

    def start(self) -> Self:
        ensure_node_modules(self.driver_dir)
        env = {**os.environ, **(self.env or {})}
        self._proc = subprocess.Popen(
            [node_binary(), str(self.driver_dir / "client.mjs")],
            cwd=self.driver_dir, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for target, label in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            thread = threading.Thread(target=target, name=f"node-clients-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            ready = self._wait(lambda: self._first(lambda r: r["type"] == "ready"), START_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if ready is None:
            message = self._context(None, "client.mjs did not start")
            self.close()
            raise HarnessError(message)
        self.versions = {k: v for k, v in ready.items() if k not in {"type", "seq", "t"}}
        return self

    def close(self) -> None:
        """End the driver: closing its stdin makes it disconnect every socket and exit; a driver
        that does not is killed by PID. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        finally:
            for thread in self._threads:
                thread.join(STOP_TIMEOUT)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def problems(self) -> list[Record]:
        """Errors the driver reported about itself (uncaught exceptions, bad command lines)."""
        with self._cond:
            return list(self._problems)

    def stderr_text(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    # -- commands -----------------------------------------------------------------------------

    def connect(self, name: str, url: str, token: str | None = None, **opts: Any) -> None:
        """`io(url, opts)` under `name`. `token` goes to `auth.token` as given (add "Bearer "
        yourself to test that form). `opts` are socket.io-client options, camelCase as in JS
        (transports=["websocket"], reconnectionDelay=100, extraHeaders={...}). Each name gets its
        own Manager (forceNew) unless opts say otherwise. Does not wait: see wait_connected."""
        merged: dict[str, Any] = {**self.default_opts, **opts}
        if token is not None:
            merged["auth"] = {**merged.get("auth", {}), "token": token}
        reply = self._call("connect", name=name, url=url, opts=merged)
        with self._cond:
            self._cursor[name] = int(reply["since"])

    def emit(
        self, name: str, event: str, *args: Any, ack: bool = True, timeout: float = 2.0,
    ) -> Any:
        """Emit from the client. With ack, wait for the server's acknowledgement and return its
        first argument (as `emitWithAck` does), or raise AckTimeout; without, return None."""
        reply = self._call(
            "emit", name=name, event=event, args=list(args), ack=ack,
            timeoutMs=round(timeout * 1000), wait=timeout + COMMAND_TIMEOUT,
        )
        result = reply["result"]
        if not ack:
            return None
        if not result["acked"]:
            raise AckTimeout(self._context(
                name, f"no ack for {event!r} within {timeout} s ({result.get('error')})"
            ))
        response = result["args"]
        return response[0] if response else None

    def close_transport(self, name: str, mode: str = "close") -> None:
        """Drop the socket's Engine.IO connection the way a network drop does, so the client
        reconnects by itself and asks for recovery. mode "close": `socket.io.engine.close()`;
        "terminate": the WebSocket's TCP connection is destroyed with no close frame."""
        reply = self._call("close_transport", name=name, mode=mode)
        with self._cond:
            self._cursor[name] = int(reply["since"])

    def disconnect(self, name: str) -> None:
        """`socket.disconnect()`: a deliberate leave; the client will not reconnect."""
        self._call("disconnect", name=name)

    def forget(self, name: str) -> None:
        """Disconnect and free the name, so that it can be connected again from scratch."""
        self._call("forget", name=name)
        with self._cond:
            self._by_name.pop(name, None)
            self._cursor.pop(name, None)

    def set_uri(self, name: str, url: str) -> None:
        """Set the socket's Manager URI (`socket.io.uri`): its next Engine.IO connection, so its
        next reconnection, goes to `url` (another replica; a closed port keeps it away)."""
        self._call("set_uri", name=name, url=url)

    def state(self, name: str) -> dict[str, Any]:
        """sid, connected, active, recovered, pid (`_pid`), lastOffset (`_lastOffset`),
        transport, engineId, managerState."""
        result: dict[str, Any] = self._call("state", name=name)["result"]
        return result

    # -- what was received --------------------------------------------------------------------

    def log(self, name: str) -> list[Record]:
        """Every record of this socket, in order."""
        with self._cond:
            return list(self._by_name.get(name, ()))

    def events(self, name: str, event: str | None = None) -> list[Received]:
        with self._cond:
            return self._events(name, event)

    def wait_events(
        self, name: str, event: str | None, count: int = 1, timeout: float = 5.0,
    ) -> list[Received]:
        """Wait until `count` events named `event` (any, if None) have arrived; return all of
        them received so far (possibly more than count)."""
        def enough() -> list[Received] | None:
            got = self._events(name, event)
            return got if len(got) >= count else None

        got = self._wait(enough, timeout)
        if got is None:
            have = len(self.events(name, event))
            raise AssertionError(self._context(
                name, f"{name}: {have} of {count} {event or 'any'} event(s) within {timeout} s"
            ))
        return got

    def assert_no_event(
        self, name: str, event: str | None = None, within: float = 0.5, allowed: int = 0,
    ) -> None:
        """Assert that no more than `allowed` events named `event` (any, if None) have been
        received by this socket, now and for `within` seconds more. Counts from the socket's
        start, so an event that came before the call fails it too."""
        deadline = time.monotonic() + within
        with self._cond:
            while True:
                got = self._events(name, event)
                if len(got) > allowed:
                    raise AssertionError(self._context(
                        name, f"{name}: {len(got)} {event or 'any'} event(s), expected at most "
                        f"{allowed}: {[(e.event, e.args) for e in got]}"
                    ))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def wait_record(
        self, name: str, match: Callable[[Record], bool], timeout: float = 5.0,
        what: str = "a matching record",
    ) -> Record:
        """The first record of this socket after its cursor that `match`es; moves the cursor."""
        def find() -> Record | None:
            after = self._cursor.get(name, 0)
            for record in self._by_name.get(name, ()):
                if record["seq"] > after and match(record):
                    self._cursor[name] = record["seq"]
                    return record
            return None

        found = self._wait(find, timeout)
        if found is None:
            raise AssertionError(self._context(name, f"{name}: no {what} within {timeout} s"))
        return found

    def wait_connected(self, name: str, timeout: float = 5.0) -> Record:
        """The next connection outcome: a `connect` record ({sid, recovered, transport}), or a
        `connect_error` after which the client gives up ({message, data}: a server refusal,
        reconnection off), or `reconnect_failed`. Transport errors the client retries after
        are skipped (they stay in log()). Check record["type"]."""
        return self.wait_record(name, _is_outcome, timeout, "connect or final connect_error")

    def wait_disconnected(self, name: str, timeout: float = 5.0) -> Record:
        """The next `disconnect` record ({reason, description, retrying})."""
        return self.wait_record(
            name, lambda r: r["type"] == "disconnect", timeout, "disconnect"
        )

    # -- internals ----------------------------------------------------------------------------

    def _events(self, name: str, event: str | None) -> list[Received]:
        return [
            Received.from_record(r) for r in self._by_name.get(name, ())
            if r["type"] == "event" and (event is None or r["event"] == event)
        ]

    def _first(self, match: Callable[[Record], bool]) -> Record | None:
        return next((r for r in self._records if match(r)), None)

    def _wait(self, probe: Callable[[], T | None], timeout: float) -> T | None:
        """Evaluate probe under the lock each time a record arrives, until it gives something,
        the driver's output ends, or timeout passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = probe()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return None
                self._cond.wait(remaining)

    def _call(self, cmd: str, *, wait: float = COMMAND_TIMEOUT, **fields: Any) -> Record:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise HarnessError("NodeClients is not started (use it as a context manager)")
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        line = json.dumps({"id": ident, "cmd": cmd, **fields}) + "\n"
        name = fields.get("name")
        with self._write_lock:
            try:
                proc.stdin.write(line.encode())
                proc.stdin.flush()
            except OSError as exc:
                raise HarnessError(self._context(name, f"{cmd}: driver gone")) from exc
        reply = self._wait(lambda: self._replies.pop(ident, None), wait)
        if reply is None:
            raise HarnessError(self._context(name, f"{cmd}: no reply within {wait} s"))
        if not reply["ok"]:
            raise HarnessError(self._context(name, f"{cmd} refused: {reply['error']}"))
        return reply

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                self._take(raw.decode("utf-8", "replace").strip())
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _take(self, line: str) -> None:
        if not line:
            return
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError("not a record")
        except ValueError:
            record = {"type": "stdout", "line": line}
        with self._cond:
            kind = record["type"]
            if kind == "reply" and isinstance(record.get("id"), int):
                self._replies[record["id"]] = record
            elif kind in {"error", "stdout", "reply"}:  # a reply to no command of ours too
                self._problems.append(record)
            self._records.append(record)
            name = record.get("name")
            if kind != "reply" and isinstance(name, str):
                self._by_name.setdefault(name, []).append(record)
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self._cond:
                self._stderr.append(raw.decode("utf-8", "replace"))

    def _context(self, name: str | None, message: str, tail: int = 40) -> str:
        with self._cond:
            records = self._by_name.get(name, []) if name is not None else self._records
            lines = [message, f"-- last {tail} records" + (f" of {name}" if name else "") + ":"]
            lines += [json.dumps(r, default=str)[:500] for r in records[-tail:]]
            if self._problems:
                lines.append("-- driver problems:")
                lines += [json.dumps(r, default=str)[:1000] for r in self._problems[-10:]]
            stderr = "".join(self._stderr).strip()
            if stderr:
                lines += ["-- driver stderr:", stderr[-4000:]]
            if self._eof:
                lines.append("-- the driver's stdout is closed (process exited)")
        return "\n".join(lines)
