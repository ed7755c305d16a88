"""The sharded listener's timings, in one module read at each use (`tuning.PING_EVERY`).

Every part of `shards` (the connections, their self-check, the topology following) reads its
delays from here at the moment it waits, never a copy taken at import: a test that needs a
faster cluster shortens them with one `monkeypatch.setattr(tuning, ...)`, whichever part uses
them.
"""

from typing import Final

BACKOFF_START = 0.1  # a shard's reconnection
BACKOFF_CAP = 5.0
PING_EVERY = 5.0
PROBE_EVERY = 3  # pings
REPLY_TIMEOUT = 3.0
SUBSCRIBE_TIMEOUT = 5.0
REFRESH_EVERY = 10.0  # the periodic topology refresh
REFRESH_DEBOUNCE = 0.05  # events in a burst make one refresh
REFRESH_RETRY_START = 0.1  # while a refresh fails or a shard holding channels is down
REFRESH_RETRY_CAP = 2.0
LOG_EVERY = 10.0  # seconds between two log lines of a repeated failure
PROBE_SEARCH: Final = 400_000  # probe names tried for one shard (`selfcheck.probe_number`)
