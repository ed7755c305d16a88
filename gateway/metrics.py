"""Prometheus metrics, cheap on the hot path.

Counters touched once per delivered event (messages sent, the latency histogram) are plain
integers updated in the event loop and turned into metric families only when /metrics is
scraped: no lock and no label lookup per event, and the latency of a fan-out is recorded once
for all its recipients (same publish time, same write moment). Everything else uses the same
scheme for uniformity. Label values come from fixed sets; never a user id.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

KNOWN_EVENTS = frozenset({"notification:new", "notification:read", "achievement:unlocked",
                          "rank:promoted", "coins:earned"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets = []
        acc = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class Metrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sent_by_event: dict[str, int] = {}
        self.errors: dict[str, int] = dict.fromkeys(
            ("unknown_event", "rate_limited", "invalid_payload", "invalid_packet", "slow_consumer",
             "bus_bad_envelope", "handshake_timeout"), 0)
        self.handshakes: dict[str, int] = {}
        self.recoveries: dict[str, int] = {}
        self.disconnects: dict[str, int] = {}
        self.bus_received_by_kind: dict[str, int] = {}
        self.bus_events: dict[str, int] = {}
        self.deliveries = 0
        self.replayed = 0
        self.http_emits: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.rtt = _Histogram(RTT_BUCKETS)
        self.active: Callable[[], int] = lambda: 0
        self.bus_up: Callable[[], bool] = lambda: False
        self.subscriptions: Callable[[], int] = lambda: 0
        self.draining: Callable[[], bool] = lambda: False
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    # -- hot path ----------------------------------------------------------------------------

    def sent(self, event: str, n: int, t_ms: float) -> None:
        label = event if event in KNOWN_EVENTS else "other"
        self.sent_by_event[label] = self.sent_by_event.get(label, 0) + n
        self.deliveries += n
        latency = time.time() - t_ms / 1000
        self.latency.observe(latency if latency > 0 else 0.0, n)

    def sent_replay(self, n: int) -> None:
        self.replayed += n

    # -- everything else ---------------------------------------------------------------------

    @staticmethod
    def _inc(table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def error(self, kind: str) -> None:
        self._inc(self.errors, kind)

    def handshake(self, outcome: str) -> None:
        self._inc(self.handshakes, outcome)

    def recovery(self, outcome: str) -> None:
        self._inc(self.recoveries, outcome)

    def connection_closed(self, reason: str) -> None:
        self._inc(self.disconnects, reason)

    def bus_received(self, kind: str) -> None:
        self._inc(self.bus_received_by_kind, kind)

    def bus_event(self, name: str) -> None:
        self._inc(self.bus_events, name)

    def redis_rtt(self, seconds: float) -> None:
        self.rtt.observe(seconds)

    def http_emit(self, outcome: str) -> None:
        self._inc(self.http_emits, outcome)

    # -- scrape ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("ws_connections_active", "Socket.IO connections open on this replica.",
                                value=self.active())
        yield _counter("ws_messages_sent", "Event packets written to clients, one per recipient.",
                       "event", self.sent_by_event)
        yield _counter("ws_errors", "Errors by kind (refused events, bad packets, slow consumers, ...).",
                       "kind", self.errors)
        yield self.latency.family("ws_latency_seconds",
                                  "From the producer's publish to the write on the client's socket.")
        yield _counter("ws_handshakes", "Socket.IO handshakes by outcome.", "outcome", self.handshakes)
        yield _counter("ws_recoveries", "Connection state recovery attempts by outcome.", "outcome",
                       self.recoveries)
        yield _counter("ws_disconnects", "Disconnections by reason.", "reason", self.disconnects)
        yield _counter("ws_replayed_messages", "Events written from history on recovery or catch-up.",
                       None, {"": self.replayed})
        yield _counter("bus_messages_received", "Messages received from the bus.", "kind",
                       self.bus_received_by_kind)
        yield _counter("bus_deliveries", "Socket writes of bus events (one per recipient).", None,
                       {"": self.deliveries})
        yield _counter("bus_reconnects", "Reconnections of the bus's pub/sub connection.", None,
                       {"": self.bus_events.get("reconnect", 0)})
        yield _counter("bus_selfcheck_repairs", "Pub/sub connections found deaf by the self-check and reopened.",
                       None, {"": self.bus_events.get("selfcheck_repair", 0)})
        yield _counter("bus_events", "Other bus incidents (subscribe timeouts, epoch changes, gaps).",
                       "event", {k: v for k, v in self.bus_events.items()
                                 if k not in {"reconnect", "selfcheck_repair"}})
        yield GaugeMetricFamily("bus_connected", "1 while the bus is connected.", value=int(self.bus_up()))
        yield GaugeMetricFamily("bus_subscriptions", "Bus channels this replica listens to.",
                                value=self.subscriptions())
        yield self.rtt.family("redis_rtt_seconds", "Round trip of the replica's heartbeat to Redis.")
        yield GaugeMetricFamily("gateway_draining", "1 while this replica drains after SIGTERM.",
                                value=int(self.draining()))
        yield _counter("http_emit", "POST /api/emit requests by outcome.", "outcome", self.http_emits)


def _counter(name: str, doc: str, label: str | None, values: dict[str, int]) -> CounterMetricFamily:
    if label is None:
        return CounterMetricFamily(name, doc, value=values.get("", 0))
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
