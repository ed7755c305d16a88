"""`python -m publisher bridge`: events of existing producers onto this gateway's bus.

Two kinds of producer keep working unchanged: Node services with `@socket.io/redis-emitter`
(msgpack on `<prefix>#/notifications#...`, requests on `<prefix>-request#/notifications#`) and
Python services with python-socketio's `RedisManager` / `AsyncRedisManager(write_only=True)`
(JSON on the `socketio` channel). What they send is decoded (`emitter`, `socketio_json`), turned
into bus operations (`operations`), and put on the bus through `AsyncPublisher`, so bridged
events get history and recovery like any other. One bridge per bus is active, the others wait
on a Redis lease (`lease`); `server` answers /healthz, /readyz and /metrics; `runner` wires it.

Those producers publish fire-and-forget on classic Redis pub/sub: what they send while no
bridge is active (between an active one dying and a standby taking over) is lost.
"""
