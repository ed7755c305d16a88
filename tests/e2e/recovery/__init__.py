"""Connection state recovery, with the real socket.io-client (docs/contract.md, "Socket.IO
surface": connection state recovery; issue 4, "Tests").

Every test drops the client's transport as a network blip does (`close_transport`: the client
reconnects by itself and sends its `pid` and offset), keeps it away while it needs to (its
manager URI points at a closed port meanwhile), emits while it is away, then lets it come back
to the same replica or to another one (`set_uri`). What must hold, whatever the timing:

- back within the window: `recovered === true`, the same socket id, the same rooms, and every
  event emitted to its rooms while it was away, once each, in publish order, before any newer
  event (events carry their publish number `n`: the client's list of `n` must be exactly the
  list published);
- otherwise (window passed, history trimmed, Redis lost its data, kicked, another user's pid,
  expired token): never recovered, never a partial replay.

Deployments: the Redis bus with three replicas and the in-memory bus (one replica, no
REDIS_URL), module-scoped and shared by tests that use their own user and classroom ids; a test
that needs other settings (2 s window, 10-entry history, recovery off) gets a deployment of
those settings, shared by the tests that ask for the same; the Redis restart test has a Redis
and replicas of its own. Redis is emitted to with `publisher.Publisher` (configured as the
replicas are), the in-memory bus through `POST /api/emit`.

One file per concern: test_replay (what was missed comes, once, in order), test_connection_loss
(how the connection died: no close frame, a half-open connection, a replica that drains or
dies), test_rooms (role rooms, tabs, rooms joined or left while away, broadcasts),
test_window_and_history (the window, trimmed or evicted history, recovery off),
test_redis_restart, test_refusals (someone else's or a made-up pid, a forged offset, an expired
token, a kicked user). support.py holds the deployments and the client steps they share,
conftest.py their fixtures.
"""
