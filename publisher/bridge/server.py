"""The bridge's operational surface: its metrics, /healthz, /readyz, /metrics, and JSON logs,
as a gateway replica has them (the same probes, the same one-object-per-line log format)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)

ROLES = ("starting", "active", "standby")


class BridgeMetrics:
    """Counters by source (`emitter`, `emitter_request`, `python_socketio`) and, for refusals,
    by reason: fixed words, never a user id, a room or an event name."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU, memory, fds: as a replica's /metrics
        self.received = Counter("bridge_messages_received_total", "Messages read from producers' channels.",
                                ["source"], registry=self.registry)
        self.bridged = Counter("bridge_messages_bridged_total", "Messages put on the bus.",
                               ["source"], registry=self.registry)
        self.refused = Counter("bridge_messages_refused_total", "Messages refused, by reason.",
                               ["source", "reason"], registry=self.registry)
        self.skipped = Counter("bridge_messages_standby_total",
                               "Messages left to the active bridge (this one was standby).",
                               ["source"], registry=self.registry)
        self.publish_errors = Counter("bridge_publish_errors_total",
                                      "Bus operations that failed after the publisher's retries (message lost).",
                                      registry=self.registry)
        self.role = Gauge("bridge_role", "1 for this bridge's current lease role.", ["role"],
                          registry=self.registry)
        self.subscribed = Gauge("bridge_subscribed", "1 while subscribed to the producers' channels.",
                                registry=self.registry)
        self.set_role("starting")

    def set_role(self, role: str) -> None:
        for name in ROLES:
            self.role.labels(role=name).set(1 if name == role else 0)


def routes(metrics: BridgeMetrics, ready: Callable[[], str | None]) -> list[web.RouteDef]:
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


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the gateway's fields (ts, level, logger, msg, extras)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
