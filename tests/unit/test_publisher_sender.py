"""publisher.sender with a runner that stands in for Redis and holds a write open when told
to: backpressure, coalescing while a write is in flight, a failed write failing exactly its
emits, calls kept in order with emits. (Against a real Redis: tests/integration/
test_publisher_sender.py.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from publisher.commands import Call, Commands
from publisher.envelope import BusNames
from publisher.errors import PublisherError, PublishError
from publisher.sender import Sender

COMMANDS = Commands(BusNames())


class Runner:
    """A one-Redis runner: each call's events get positions 1-0, 2-0, ... in order."""

    sharded = False
    where = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.writes: list[list[Call]] = []
        self.fail: set[int] = set()  # indexes of the writes to fail
        self._next = 0

    def run(self, calls: Sequence[Call]) -> list[Any]:
        self.entered.release()
        assert self.gate.wait(10)
        self.writes.append(list(calls))
        if len(self.writes) - 1 in self.fail:
            raise PublishError("fake: refused")
        replies = []
        for call in calls:
            reply: list[Any] = []
            for _ in range(int(call.args[0])):
                self._next += 1
                reply += [f"{self._next}-0".encode(), 1]
            replies.append(reply)
        return replies

    def events(self, write: int) -> int:
        return sum(int(call.args[0]) for call in self.writes[write])


def emit(sender: Sender, n: int, room: str = "quiz:1") -> Any:
    return sender.emit(COMMANDS.event("x", n, room=room))


def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_full_queue_blocks_emit_and_drops_nothing() -> None:
    runner = Runner()
    sender = Sender(runner, COMMANDS, linger=0, max_queue=3)
    runner.gate.clear()
    first = emit(sender, 0)
    assert runner.entered.acquire(timeout=10), "the first write is in flight, held open"
    queued = [emit(sender, n) for n in (1, 2, 3)]  # the queue is full now
    blocked: list[Any] = []
    producer = threading.Thread(target=lambda: blocked.append(emit(sender, 4)))
    producer.start()
    state = sender._state
    wait_until(lambda: len(state.not_full._waiters) == 1, "the fourth emit waits for room")  # type: ignore[attr-defined]
    assert len(state.queue) == 3
    assert blocked == []
    runner.gate.set()
    producer.join(10)
    sender.flush(10)
    futures = [first, *queued, *blocked]
    assert [f.result() for f in futures] == [f"{n}-0" for n in range(1, 6)], "all, in order"
    sender.close(10)


def test_what_queues_during_a_write_leaves_in_the_next_one_as_one_call() -> None:
    runner = Runner()
    sender = Sender(runner, COMMANDS, linger=0)
    runner.gate.clear()
    emit(sender, 0)
    assert runner.entered.acquire(timeout=10)
    later = [emit(sender, n, room=f"user:{n}") for n in range(1, 10)]
    runner.gate.set()
    sender.flush(10)
    assert [runner.events(i) for i in range(len(runner.writes))] == [1, 9]
    assert len(runner.writes[1]) == 1, "nine rooms, one Redis: one publish.lua call"
    assert [f.result() for f in later] == [f"{n}-0" for n in range(2, 11)]
    sender.close(10)


def test_a_failed_write_fails_its_emits_and_no_others() -> None:
    runner = Runner()
    runner.fail = {1}
    sender = Sender(runner, COMMANDS, linger=60)
    ok = [emit(sender, 0)]
    sender.flush(10)
    failed = [emit(sender, 1), emit(sender, 2, room="user:2")]
    with pytest.raises(PublishError, match="2 emit"):
        sender.flush(10)
    after = [emit(sender, 3)]
    sender.flush(10)  # the failures were reported once
    assert [f.exception() for f in ok + after] == [None, None]
    assert all(isinstance(f.exception(), PublishError) for f in failed)
    assert [runner.events(i) for i in range(3)] == [1, 2, 1]
    sender.close(10)


def test_a_failed_write_is_logged_once_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner()
    runner.fail = {0}
    sender = Sender(runner, COMMANDS, linger=60)
    with caplog.at_level(logging.ERROR, logger="publisher"):
        emit(sender, 1)
        emit(sender, 2, room="user:2")  # the same write
        with pytest.raises(PublishError):
            sender.flush(10)
    assert [r.getMessage() for r in caplog.records] == [
        "publisher: 2 emit(s) failed (their futures hold the error): fake: refused"]
    sender.close(10)


def test_a_call_runs_after_the_emits_before_it() -> None:
    runner = Runner()
    sender = Sender(runner, COMMANDS, linger=60)
    futures = [emit(sender, n) for n in range(3)]
    seen = sender.call(lambda r: len(r.writes))  # type: ignore[attr-defined]
    assert seen == 1, "the emits were written first, as one write"
    assert all(f.done() for f in futures)
    sender.close(10)


def test_a_batch_is_at_most_max_batch_items() -> None:
    runner = Runner()
    sender = Sender(runner, COMMANDS, linger=60, max_batch=4)
    futures = [emit(sender, n) for n in range(10)]
    sender.flush(10)
    assert [runner.events(i) for i in range(len(runner.writes))] == [4, 4, 2]
    assert [f.result() for f in futures] == [f"{n}-0" for n in range(1, 11)]
    sender.close(10)


def test_a_done_callback_may_emit_but_not_wait() -> None:
    """Done callbacks run on the sender thread: an emit there is queued (never blocked), a wait
    there is refused with an explanation instead of hanging the sender."""
    runner = Runner()
    sender = Sender(runner, COMMANDS, linger=60, max_queue=1)
    seen: list[Any] = []

    def callback(_future: Any) -> None:
        try:
            sender.flush(1)
        except PublisherError as exc:
            seen.append(str(exc))
        seen.append([emit(sender, n) for n in range(3)])  # over max_queue: not blocked

    emit(sender, 0).add_done_callback(callback)
    sender.flush(10)
    assert "wait for itself" in seen[0]
    assert [f.result() for f in seen[1]] == ["2-0", "3-0", "4-0"]
    sender.close(10)
