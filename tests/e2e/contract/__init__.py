"""Issue 2, the gateway core, against a real `gateway` process and the real socket.io-client.

Every test reads a line of docs/contract.md ("Running it", "Socket.IO surface", "Operating it")
and checks it from outside: handshakes and their refusals, rooms per role, the ack, unknown events,
expiry while connected, CORS and the WebSocket Origin check, POST /api/emit, health and
metrics, `gateway --dev` and bad settings.

Most tests share one replica (in-memory bus, the default without REDIS_URL) started once for
the module; each test uses its own user ids, and compares counters before and after. Tests
that need other settings start their own replica (`start_gateway`). Both transports are exercised on the main paths.

One file per concern: test_handshake (tokens accepted and refused), test_token_expiry (expiry
while connected), test_rooms (rooms per role, the subscribe ack, isolation), test_client_events
(events a client may not send), test_origins (CORS and the WebSocket Origin check),
test_emit_api (POST /api/emit), test_health_and_metrics, test_startup (`gateway --dev`,
`--help`, `python -m gateway`, bad settings). support.py holds what they share, conftest.py
the module replica.
"""
