"""What every process of this project shows operators, written once: the gateway's replicas
and `python -m publisher bridge` answer the same probes and log the same JSON lines (one
dashboard, one log pipeline, one way to read them). Here rather than in `gateway`, which
depends on `publisher` and not the other way round.

aiohttp and prometheus_client come with the gateway and with the `bridge` extra; the plain
producer library never imports this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# A field named like a credential is dropped whatever it holds (settings are logged through
# their public views, which mask them; this is the net under a future `extra=`).
_SECRET_FIELDS = {"token", "jwt", "authorization", "password", "secret", "cookie", "api_key",
                  "publish_api_key", "jwt_secret", "jwt_secrets", "sentinel_password"}


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


def routes(metrics: HasRegistry, ready: Callable[[], str | None]) -> list[web.RouteDef]:
    """/healthz (the process answers), /readyz (`ready()`: None, or why not), /metrics."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": reason}, status=503)

    async def metrics_text(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_text)]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's `extra=` fields."""

    # The timestamp's date and time to the second, rendered once per second (a burst of
    # handshakes logs thousands of lines in the same second).
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        line: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
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
