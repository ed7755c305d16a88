"""The guard of tests/conftest.py: inside an async test's event loop, a blocking call fails."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from blockbuster import BlockingError


async def test_time_sleep_in_the_event_loop_fails() -> None:
    with pytest.raises(BlockingError, match=r"time\.sleep"):
        time.sleep(0)  # noqa: ASYNC251 - the point of the test


async def test_blocking_socket_io_in_the_event_loop_fails() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        b.send(b"x")  # a non-blocking socket, as asyncio's own, is allowed
        with pytest.raises(BlockingError, match="recv"):
            a.recv(1)


async def test_the_same_calls_off_the_loop_thread_are_fine() -> None:
    await asyncio.to_thread(time.sleep, 0)


def test_sync_tests_are_not_concerned() -> None:
    time.sleep(0)
