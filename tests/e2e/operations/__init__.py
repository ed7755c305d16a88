"""Issue 6, operating the gateway, against real `gateway` processes, a real Redis and the real
socket.io-client (docs/contract.md, "Operating it").

- Metrics: every family `/metrics` exports, parsed with prometheus_client's parser, has its type
  and its label names; the counters and gauges move when the thing they count happens
  (connections, event packets per recipient, latency observations, refused events, handshakes
  and their refusals, recoveries and replays, disconnects by reason, the bus's messages,
  deliveries and reconnections, `POST /api/emit` outcomes); no label value ever holds a user id.
- Drain: two replicas on one Redis; SIGTERM to one with `DRAIN_SECONDS=2`: its readiness goes
  503 at once and it refuses new handshakes with 503; its clients lose their transport (not a
  Socket.IO DISCONNECT), reconnect to the other replica (their manager's URI points there, as a
  load balancer would send them) and recover; every event published meanwhile arrives once, in
  order; the process exits 0 in time.
- Logs: `LOG_FORMAT=json` gives one JSON object per line, a line per connection and per
  disconnection with `sid` and `user_id`, and never a token or a piece of one.

Most metric tests share one replica on the module's Redis and compare counters before and
after, with user ids of their own; tests whose process-wide state matters (a Redis restart, a
drain, a log to read whole) start their own. Waits are bounded and generous; assertions are
about what happened, not how fast.

One file per concern: test_metrics_families (what /metrics exports, and the dashboard),
test_metrics_counters (what moves when), test_bus_outage (the bus going away and coming back:
metrics, readiness, catch-up, presence), test_drain (SIGTERM), test_logs (JSON logs).
support.py holds what the files share (tests/e2e/test_nginx_gateway.py uses it too), conftest.py
the module replica and its fixtures.
"""
