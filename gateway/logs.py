"""Process logging: one JSON object per line (or plain text for a terminal).

Fields passed as `extra=` (sid, user_id, reason, ...) become keys of the line. Tokens are never
passed to a logger anywhere in the gateway; the formatter also drops any field named like one.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# A field named like a credential is dropped whatever it holds (the settings are logged through
# Settings.public_view, which masks them; this is the net under a future `extra=`).
_SECRET_FIELDS = {"token", "jwt", "authorization", "password", "secret", "cookie", "api_key",
                  "publish_api_key", "jwt_secret", "jwt_secrets", "sentinel_password"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key.lower() not in _SECRET_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: at most every 50 ms, at once for warnings and errors.

    A connection is two log lines; written one by one they cost a system call each, which in
    a burst of handshakes is a noticeable share of the replica's CPU.
    """

    FLUSH_AFTER = 0.05

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - the logging module's own contract for handlers
            self.handleError(record)
            return
        self._lines.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (start-up, shutdown, a thread): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        lines, self._lines = self._lines, []
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing left to tell
                pass


def configure(level: str, fmt: str) -> None:
    handler = BatchingHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    atexit.register(handler.flush)
    root.setLevel(level.upper())
    # python-socketio and python-engineio log every packet at INFO; ours say what matters.
    for noisy in ("socketio", "engineio", "gateway.socketio", "gateway.engineio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
