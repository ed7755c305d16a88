"""Process logging: one JSON object per line (or plain text for a terminal).

Fields passed as `extra=` (sid, user_id, reason, ...) become keys of the line. Tokens are never
passed to a logger anywhere in the gateway; the formatter also drops any field named like one.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys

from publisher.opsurface import JsonFormatter

__all__ = ["BatchingHandler", "JsonFormatter", "configure"]


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
    # Neither format shows where a line was logged from, nor its thread or process: skip
    # collecting them (the logging HOWTO's "Optimization" settings). Each connection logs two
    # lines; this takes about 2.5 us off each (findCaller's stack walk, current_thread, getpid).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # python-socketio and python-engineio log every packet at INFO; ours say what matters.
    for noisy in ("socketio", "engineio", "gateway.socketio", "gateway.engineio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
