"""One active bridge per bus: a lease in Redis, taken with SET NX PX and renewed by a
compare-and-extend script, both through the publisher's transport (any REDIS_URL form).

The active bridge delivers only while it is sure it holds the lease: until a local deadline
counted from the moment it *sent* its last successful renewal, shorter than the TTL by a margin.
The key outlives that deadline in Redis, so a standby can take the lease only after the old
holder has stopped delivering: two bridges never publish the same message. When the holder
dies, its key expires within the TTL and a standby, trying every renewal interval, takes it.

Holding the lease is not enough to deliver: a bridge that takes it publishes a fence
(`take <token> <term>`) on the fence channel, which every bridge reads on its subscriber
connection among the producers' messages, in the one order Redis sent them all. The new holder
delivers what follows its fence; any other bridge, what precedes it. So a bridge stopping on
purpose can release the lease and go on delivering until it reads the new holder's fence:
nothing is lost at a planned handover, and nothing is delivered twice at any takeover, even
by a standby that reads late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Final

from publisher.commands import Call
from publisher.errors import PublisherError
from publisher.scripts import Script
from publisher.transports import AsyncRunner

LEASE: Final = Script.load("lease.lua", "publisher.bridge")
RELEASE: Final = Script.load("release.lua", "publisher.bridge")
FENCE: Final = Script.load("fence.lua", "publisher.bridge")
TAKE = "take"  # a fence: the holder delivers what follows it, the others what precedes it
RELEASED = "released"  # a fence: the holder let the lease go, standbys try to take it now
log = logging.getLogger("publisher.bridge.lease")

ACTIVE = "active"
STANDBY = "standby"
STARTING = "starting"


class Lease:
    """Tries to take or renew the lease every `renew_ms`; `active()` says whether this bridge
    may deliver now."""

    def __init__(self, transport: AsyncRunner, key: str, holder: str, *, ttl_ms: int, renew_ms: int,
                 clock: Callable[[], float] = time.monotonic,
                 on_role: Callable[[str], None] = lambda role: None) -> None:
        self._transport = transport
        self._key = key
        # unique per process: a restarted bridge with the same BRIDGE_ID is another holder
        self.token = f"{holder}/{uuid.uuid4().hex}"
        self._ttl_ms = ttl_ms
        self.ttl_s = ttl_ms / 1000
        self._renew_s = renew_ms / 1000
        # The margin covers the renewal's own flight and clock rates differing a little.
        self._valid_s = ttl_ms / 1000 - max(ttl_ms / 1000 / 5, 2 * renew_ms / 1000)
        self._clock = clock
        self._on_role = on_role
        self._until = 0.0  # local deadline: may deliver while clock() < this
        self.role = STARTING
        self.reachable = False  # did the last attempt get an answer from Redis
        self.term = 0  # how many times this bridge took the lease (its fences name the term)
        self.fence_channel = key + ":fence"

    def active(self) -> bool:
        return self._clock() < self._until

    async def attempt(self) -> bool:
        """Take or renew once; True when this bridge holds the lease afterwards."""
        sent = self._clock()
        try:
            reply = await self._transport.run((Call.of(LEASE, 1, self._key, self.token, self._ttl_ms),))
        except PublisherError as exc:
            self.reachable = False
            if self.role == ACTIVE:
                log.warning("lease renewal failed: %s", exc)
            self._set_role(ACTIVE if self.active() else STANDBY)
            return self.active()
        self.reachable = True
        if int(reply[0]) == 1:
            if not self.active():
                self.term += 1  # taken now, not renewed: a new fence is due
            self._until = sent + self._valid_s
            self._set_role(ACTIVE)
            return True
        self._until = 0.0
        self._set_role(STANDBY)
        return False

    def _set_role(self, role: str) -> None:
        if role != self.role:
            log.info("lease: now %s", role, extra={"role": role, "holder": self.token})
            self.role = role
            self._on_role(role)

    async def run(self, wake: asyncio.Event, fenced: Callable[[], bool]) -> None:
        """Attempt every renewal interval, forever, or at once when `wake` is set (the holder
        released the lease); also flips the role to standby when the local deadline passes
        without a renewal (Redis unreachable). While this bridge holds the lease and has not
        read its own fence (`fenced`), the fence is published again each round."""
        while True:
            started = self._clock()
            wake.clear()
            if await self.attempt() and not fenced():
                await self.fence(TAKE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, self._renew_s - (self._clock() - started)))

    async def fence(self, kind: str) -> bool:
        """Publish a fence (`TAKE` or `RELEASED`) naming this bridge and its term; False when
        Redis did not take it (the caller tries again)."""
        try:
            await self._transport.run((Call.of(FENCE, 1, self._key, self.fence_channel,
                                               f"{kind} {self.token} {self.term}"),))
        except PublisherError as exc:
            log.warning("lease fence not published: %s", exc)
            return False
        return True

    async def release(self) -> None:
        """Give the lease up at once (a clean stop): a standby takes over at its next attempt."""
        self._until = 0.0
        try:
            await self._transport.run((Call.of(RELEASE, 1, self._key, self.token),))
        except PublisherError as exc:
            log.warning("lease release failed (it expires by itself): %s", exc)
        self._set_role(STANDBY)
