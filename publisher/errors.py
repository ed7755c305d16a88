"""What the publisher raises, so that a producer can tell "my mistake" from "Redis trouble".

Caller mistakes (a bad event name, payload, room or user id) are `ValueError`s, raised before
anything is sent, and retrying them is pointless. Trouble on the way to Redis is a
`PublisherError`; `PublishError` also derives from the built-in `ConnectionError` (and
`PublishTimeout` from `TimeoutError`) so that code which already catches those keeps working,
the way aiohttp's `ServerTimeoutError` is both its own error and an `asyncio.TimeoutError`.
A publish either returns its offset or raises: nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

from publisher.envelope import EnvelopeError
from publisher.events import InvalidEvent, InvalidPayload
from publisher.rooms import InvalidRoom

__all__ = [
    "EnvelopeError",
    "InvalidEvent",
    "InvalidPayload",
    "InvalidRoom",
    "PublishError",
    "PublishTimeout",
    "PublisherError",
]


class PublisherError(Exception):
    """Base of the errors that come from Redis or the connection, not from the arguments."""


class PublishError(PublisherError, ConnectionError):
    """Redis could not be reached, or refused the command, after the bounded retries.

    The message may have been published if the connection broke after Redis ran the script
    (its reply was lost); see `Publisher` for the delivery guarantee.

    `replies`, when set, is what each call of the failed run came to, in call order: its reply,
    or a `PublishError` of its own where it failed. The other calls ran (on a Redis Cluster, on
    the shards that answered), so the senders resolve those callers' futures with their
    positions, not with one shard's trouble.
    """

    replies: list[Any] | None = None


class PublishTimeout(PublishError, TimeoutError):
    """The last attempt timed out waiting for Redis."""
