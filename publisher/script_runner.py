"""Sending script calls to Redis: one round trip per batch, NOSCRIPT fallback, bounded retries.

Why not `client.execute_command`: with redis-py 8 its pooling and instrumentation cost about
25 µs of CPU per command, more than everything else a publish does. A transport instead takes
connections from the client's pool once and keeps them, one per concurrent caller (a deque:
`pop` and `append` are atomic, so threads need no lock), and speaks to them directly. Any
failure in the middle of a command closes that connection, so a half-read reply can never be
taken for the next command's; it reconnects on its next use. After a fork the parent's
connections are left alone and new ones are made.

A connection that failed goes back to the pool instead: the pool reconnects it on next use,
and a Sentinel pool asks the sentinels first, which is how a publisher follows a failover.

Delivery: a call is sent again after a connection error or timeout, up to `retries` times,
sleeping 0.05, 0.1, 0.2 s... (doubling, at most 1 s) in between; then `PublishError` (or
`PublishTimeout`). If the connection broke after Redis ran the script, the retry publishes a
second time: at least once, never silently dropped. A command Redis refuses (other than
NOSCRIPT, which is answered by sending the script itself) is not retried.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError, ResponseError

from publisher.commands import Call
from publisher.errors import PublisherError, PublishError, PublishTimeout

_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


def check_retries(retries: int) -> int:
    """`retries` as every transport takes it: attempts after the first, 0 to 10."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ValueError(f"retries must be an integer from 0 to 10, got {retries!r}")
    return retries


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): 0.05, 0.1, 0.2, ... ≤ 1."""
    return min(0.05 * (1 << attempt), 1.0)


def describe(client: redis.Redis | redis.asyncio.Redis) -> str:
    """Where a client points, without credentials, for error messages."""
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"the master of Sentinel service {service!r}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return type(pool).__name__


def _failure(where: str, attempts: int, exc: BaseException) -> PublishError:
    kind = PublishTimeout if isinstance(exc, redis.TimeoutError | TimeoutError) else PublishError
    return kind(f"could not reach Redis at {where} after {attempts} attempt(s): {exc}")


def _refused(where: str, index: int, total: int, exc: ResponseError) -> PublishError:
    which = f"call {index + 1} of {total}" if total > 1 else "the call"
    return PublishError(f"Redis at {where} refused {which}: {exc}")


def _missing_scripts(replies: list[Any]) -> list[int]:
    return [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]


def _first_refusal(where: str, replies: list[Any]) -> None:
    """Raise the first refusal, carrying what every call came to (the others ran)."""
    for index, reply in enumerate(replies):
        if isinstance(reply, ResponseError):
            error = _refused(where, index, len(replies), reply)
            error.replies = [
                _refused(where, i, len(replies), r) if isinstance(r, ResponseError) else r
                for i, r in enumerate(replies)
            ]
            raise error


class SyncTransport:
    """Runs calls on a redis-py client's connections for a sync publisher."""

    sharded = False  # one Redis: a publish call may carry events of any rooms

    def __init__(self, client: redis.Redis, *, retries: int, where: str) -> None:
        self.client = client
        self.where = where
        self._retries = retries
        self._pool = client.connection_pool
        self._idle: deque[Any] = deque()
        self._pid = os.getpid()

    def roundtrip(self, packed: bytes, count: int) -> list[Any]:
        """Send `packed` (commands in RESP) on a kept connection and read `count` replies, once.

        Refusals come back as `ResponseError` values in place; a connection failure raises,
        having closed that connection. Shared with `publisher.cluster`, which sends to each
        node through one of these.
        """
        if self._pid != os.getpid():
            self._idle, self._pid = deque(), os.getpid()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.get_connection()
        try:
            conn.send_packed_command((packed,))
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # a reply like any other: keep reading
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            # Back to the pool, not kept: the pool reconnects it on its next use, and a
            # Sentinel pool asks the sentinels where the primary is now (a kept connection
            # would dial the old primary again after a failover).
            self._pool.release(conn)
            raise
        self._idle.append(conn)
        return replies

    def _once(self, calls: Sequence[Call]) -> list[Any]:
        replies = self.roundtrip(b"".join([call.packed for call in calls]), len(calls))
        missing = _missing_scripts(replies)
        if missing:  # Redis restarted or SCRIPT FLUSH: EVAL caches the script again
            again = self.roundtrip(
                b"".join([calls[i].eval_packed() for i in missing]), len(missing))
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        _first_refusal(self.where, replies)
        return replies

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order, sent in one round trip (two after NOSCRIPT)."""
        attempt = 0
        while True:
            try:
                return self._once(calls)
            except PublisherError:  # a refusal, already explained (and an OSError too)
                raise
            except _RETRYABLE as exc:
                if attempt >= self._retries:
                    raise _failure(self.where, attempt + 1, exc) from exc
                time.sleep(backoff(attempt))
                attempt += 1
            except redis.RedisError as exc:
                raise PublishError(f"Redis at {self.where} failed: {exc}") from exc

    def close(self) -> None:
        """Give the kept connections back to the pool (the client itself stays open)."""
        while self._idle:
            self._pool.release(self._idle.pop())


class AsyncTransport:
    """Runs calls on a redis.asyncio client's connections for an asyncio publisher."""

    sharded = False

    def __init__(self, client: redis.asyncio.Redis, *, retries: int, where: str) -> None:
        self.client = client
        self.where = where
        self._retries = retries
        self._pool = client.connection_pool
        self._idle: deque[Any] = deque()

    async def roundtrip(self, packed: bytes, count: int) -> list[Any]:
        """See `SyncTransport.roundtrip`."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command((packed,))
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:  # also CancelledError: the reply may still be on its way
            await asyncio.shield(conn.disconnect())
            await asyncio.shield(self._pool.release(conn))  # see SyncTransport: follows a failover
            raise
        self._idle.append(conn)
        return replies

    async def _once(self, calls: Sequence[Call]) -> list[Any]:
        replies = await self.roundtrip(b"".join([call.packed for call in calls]), len(calls))
        missing = _missing_scripts(replies)
        if missing:
            again = await self.roundtrip(
                b"".join([calls[i].eval_packed() for i in missing]), len(missing))
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        _first_refusal(self.where, replies)
        return replies

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order, sent in one round trip (two after NOSCRIPT)."""
        attempt = 0
        while True:
            try:
                return await self._once(calls)
            except PublisherError:  # a refusal, already explained (and an OSError too)
                raise
            except _RETRYABLE as exc:
                if attempt >= self._retries:
                    raise _failure(self.where, attempt + 1, exc) from exc
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            except redis.RedisError as exc:
                raise PublishError(f"Redis at {self.where} failed: {exc}") from exc

    async def close(self) -> None:
        """Give the kept connections back to the pool (the client itself stays open)."""
        while self._idle:
            await self._pool.release(self._idle.pop())
