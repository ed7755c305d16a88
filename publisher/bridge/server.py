"""The bridge's operational surface: its metrics, /healthz, /readyz, /metrics, and JSON logs,
as a gateway replica has them (the same probes, the same one-object-per-line log format)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from publisher.bridge.lease import ACTIVE, STANDBY, STARTING
from publisher.opsurface import JsonFormatter, routes

__all__ = ["BridgeMetrics", "routes", "setup_logging"]

ROLES = (STARTING, ACTIVE, STANDBY)


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
        self.lost = Counter("bridge_messages_lost_total",
                            "Messages read while active that never reached the bus, by reason.",
                            ["source", "reason"], registry=self.registry)
        self.resubscribes = Counter("bridge_resubscribes_total",
                                    "Subscriber connections lost and made again (messages lost meanwhile).",
                                    registry=self.registry)
        self.role = Gauge("bridge_role", "1 for this bridge's current lease role.", ["role"],
                          registry=self.registry)
        self.subscribed = Gauge("bridge_subscribed", "1 while subscribed to the producers' channels.",
                                registry=self.registry)
        self._children: dict[tuple[Counter, str], Any] = {}
        self.set_role(STARTING)

    def inc(self, counter: Counter, source: str, n: int = 1) -> None:
        """`counter.labels(source=source).inc(n)` for the per-message counters, each source's
        child looked up once: `labels()` takes a lock and builds its key on every call."""
        child = self._children.get((counter, source))
        if child is None:
            child = self._children[counter, source] = counter.labels(source=source)
        child.inc(n)

    def set_role(self, role: str) -> None:
        for name in ROLES:
            self.role.labels(role=name).set(1 if name == role else 0)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
