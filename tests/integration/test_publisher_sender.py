"""The sync Publisher's auto-pipelining sender (publisher/sender.py) on a real redis-server:
many emits in one write and one script call, order kept with the calls that follow, flush and
close, a failed write failing exactly its emits, a fork. (Sentinel: test_publisher_redis_url.py;
a cluster: test_publisher_cluster.py.)"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from publisher import Publisher, PublisherError, PublishError, parse_position
from publisher.scripts import PUBLISH
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SLOW = 30.0  # a linger no test waits out: writes happen because someone waits, or a batch fills


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.script_load(PUBLISH.source)  # so that a call is one EVALSHA, never NOSCRIPT and EVAL
    client.config_resetstat()
    yield client
    client.close()


def ids(r: redis.Redis, room: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in r.xrange(f"ngw:{{{room}}}:h")]


def script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))


def test_emit_returns_a_future_and_queued_emits_share_one_script_call(
        redis_server: RedisServer, r: redis.Redis) -> None:
    with Publisher(redis_server.url, linger=SLOW) as pub:
        futures = [pub.emit("x", i, user=i % 7) for i in range(40)]
        assert all(isinstance(f, Future) for f in futures)
        assert not any(f.done() for f in futures), "queued: the linger has not passed"
        assert script_calls(r) == 0
        pub.flush()
        assert all(f.done() for f in futures)
        positions = [f.result() for f in futures]
        assert script_calls(r) == 1, "40 events of 7 rooms: one publish.lua call on one Redis"
        for user in range(7):
            assert ids(r, f"user:{user}") == positions[user::7], "each room's events in emit order"


def test_a_call_after_emits_runs_after_them(redis_server: RedisServer, r: redis.Redis) -> None:
    """join waits behind the emits queued before it: the room's position at the join is the last
    of them, so a client joined there gets none of them twice and misses nothing after."""
    with Publisher(redis_server.url, linger=SLOW) as pub:
        futures = [pub.emit("x", i, room="quiz:1") for i in range(5)]
        at = pub.join(9, "quiz:1")
        assert all(f.done() for f in futures)
        assert at == {"quiz:1": futures[-1].result()}
        later = pub.emit("x", 5, room="quiz:1")
        assert pub.leave(9, "quiz:1") == {"quiz:1": later.result()}
        assert pub.disconnect_user(9) == 0
        assert pub.is_online(9) is False
        assert ids(r, "quiz:1") == [f.result() for f in [*futures, later]]


def test_close_writes_what_is_queued(redis_server: RedisServer, r: redis.Redis) -> None:
    pub = Publisher(redis_server.url, linger=SLOW)
    futures = [pub.emit("x", i, user=1) for i in range(3)]
    pub.close()
    assert ids(r, "user:1") == [f.result() for f in futures]
    with pytest.raises(PublisherError, match="closed"):
        pub.emit("x", 4, user=1)
    pub.close()  # twice is fine


def test_linger_zero_still_coalesces_and_order_holds(redis_server: RedisServer, r: redis.Redis) -> None:
    with Publisher(redis_server.url, linger=0) as pub:
        futures = [pub.emit("x", i, room="quiz:2") for i in range(300)]
        pub.flush()
    assert ids(r, "quiz:2") == [f.result() for f in futures]
    assert script_calls(r) < 300, "some emits shared a write (while the one before was in flight)"


def test_bad_arguments_raise_at_once_and_queue_nothing(redis_server: RedisServer, r: redis.Redis) -> None:
    with Publisher(redis_server.url, linger=SLOW) as pub:
        with pytest.raises(ValueError, match="room"):
            pub.emit("x", {}, room="admin:everyone")
        with pytest.raises(TypeError, match="target"):
            pub.emit("x", {})
        pub.flush()
    assert script_calls(r) == 0
    with pytest.raises(ValueError, match="linger"):
        Publisher(redis_server.url, linger=-1)
    with pytest.raises(ValueError, match="max_queue"):
        Publisher(redis_server.url, max_queue=0)


def test_a_failed_write_fails_exactly_its_emits(redis_server: RedisServer, r: redis.Redis) -> None:
    """One write, one publish.lua call: a refusal fails every emit of that write and no other;
    the next write goes on. flush reports failures nobody looked at."""
    r.set("ngw:{user:1}:h", "not a stream")
    with Publisher(redis_server.url, linger=SLOW) as pub:
        first = [pub.emit("x", 0, user=2), pub.emit("x", 1, user=1), pub.emit("x", 2, user=3)]
        with pytest.raises(PublishError, match="WRONGTYPE"):
            pub.flush()
        for future in first:
            assert isinstance(future.exception(), PublishError)
        r.delete("ngw:{user:1}:h")
        second = [pub.emit("x", 3, user=1), pub.emit("x", 4, user=2)]
        pub.flush()  # no new failure; the earlier ones were reported once
        assert [f.exception() for f in second] == [None, None]
        assert ids(r, "user:1") == [second[0].result()]
        # a failure whose future was looked at is not reported again by flush
        r.set("ngw:{user:5}:h", "not a stream")
        with pytest.raises(PublishError, match="WRONGTYPE"):
            pub.emit("x", 5, user=5).result()
        pub.flush()
        r.delete("ngw:{user:5}:h")


def test_an_emit_cancelled_before_its_write_is_not_published(redis_server: RedisServer, r: redis.Redis) -> None:
    with Publisher(redis_server.url, linger=SLOW) as pub:
        kept, dropped = pub.emit("x", 1, user=1), pub.emit("x", 2, user=1)
        assert dropped.cancel()
        pub.flush()
        assert ids(r, "user:1") == [kept.result()]


def test_emit_many_and_batches_go_through_the_queue_in_order(redis_server: RedisServer, r: redis.Redis) -> None:
    from publisher import Message

    with Publisher(redis_server.url, linger=SLOW) as pub:
        before = pub.emit("x", "before", room="quiz:3")
        many = pub.emit_many([Message("x", i, room="quiz:3") for i in range(1100)])  # > a write
        with pub.pipeline() as batch:
            for i in range(3):
                batch.emit("x", i, room="quiz:3")
        assert ids(r, "quiz:3")[-1000:] == [before.result(), *many, *batch.positions][-1000:]
        assert parse_position(batch.positions[-1]) > parse_position(many[-1]) > parse_position(before.result())


def _child_emits(pub: Publisher, results: multiprocessing.Queue[str]) -> None:
    results.put(pub.emit("x", "child", user=1).result())
    pub.close()


def test_a_forked_child_never_uses_the_parents_queue_or_thread(redis_server: RedisServer, r: redis.Redis) -> None:
    """Forked while an emit waits in the parent's queue (and the sender thread runs): the child
    has a queue, thread and connections of its own; the parent's emit is written once, by the
    parent."""
    with Publisher(redis_server.url, linger=SLOW) as pub:
        pub.emit("x", "warm", user=1).result()  # the parent's thread and connection exist
        waiting = pub.emit("x", "parent", user=1)
        context = multiprocessing.get_context("fork")
        results: multiprocessing.Queue[str] = context.Queue()
        child = context.Process(target=_child_emits, args=(pub, results))
        child.start()
        child.join(20)
        assert child.exitcode == 0
        from_child = results.get(timeout=5)
        assert not waiting.done(), "the child did not write the parent's queued emit"
        pub.flush()
    entries = [fields[b"m"] for _, fields in r.xrange("ngw:{user:1}:h")]
    assert [e.count(b'"parent"') for e in entries].count(1) == 1, "written exactly once"
    assert from_child in ids(r, "user:1")



def test_a_process_that_ends_without_close_still_writes_what_it_queued(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """The atexit hook flushes: a script that emits (with a linger it never waits out) and just
    ends loses nothing."""
    script = (
        "from publisher import Publisher\n"
        f"pub = Publisher({redis_server.url!r}, linger=30.0)\n"
        "for i in range(5):\n"
        "    pub.emit('x', i, room='quiz:exit')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(fields[b"m"])["d"] for _, fields in r.xrange("ngw:{quiz:exit}:h")] == [0, 1, 2, 3, 4]


def test_a_done_callback_that_raises_anything_leaves_the_sender_running(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """concurrent.futures logs a callback's Exception, but lets a BaseException (a `sys.exit()`
    in a callback) out into the sender thread: it must not end the thread, or every later emit,
    and the other emits of that write, would wait forever."""
    pub = Publisher(redis_server.url, linger=SLOW)
    try:
        first = pub.emit("x", 0, user=1)
        first.add_done_callback(lambda _f: sys.exit("a callback quits"))
        same_write = pub.emit("x", 1, user=1)
        pub.flush(10)
        assert first.result(10)
        assert same_write.result(10)
        later = pub.emit("x", 2, user=1)
        pub.flush(10)
        assert ids(r, "user:1") == [first.result(), same_write.result(), later.result(10)]
    finally:
        pub.close(10)


def test_a_refused_call_fails_its_emits_and_not_those_of_the_calls_that_ran(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """A write of more events than one publish call carries is several calls in one round
    trip: when Redis refuses one (a key of the wrong type), the others ran, and their emits
    get their positions; reporting them failed would have a producer publish them twice."""
    from publisher.commands import MAX_EVENTS_PER_CALL

    r.set("ngw:{user:8}:h", "not a stream")
    with Publisher(redis_server.url, linger=SLOW) as pub:
        published = [pub.emit("x", i, room="quiz:8") for i in range(MAX_EVENTS_PER_CALL)]
        refused = pub.emit("x", "refused", user=8)  # the next call of the same write
        with pytest.raises(PublishError, match="WRONGTYPE"):
            pub.flush(10)
        assert isinstance(refused.exception(0), PublishError)
        assert [f.exception(0) for f in published] == [None] * MAX_EVENTS_PER_CALL
        assert ids(r, "quiz:8") == [f.result(0) for f in published]
    r.delete("ngw:{user:8}:h")


def test_a_future_resolved_by_its_caller_before_its_write_leaves_the_sender_running(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """`Emitted` is a `concurrent.futures.Future`, whose `set_result` is public: a caller that
    resolves one itself makes the sender's `set_running_or_notify_cancel` raise. The emits of
    that write fail with a `PublisherError` that says so; the thread goes on."""
    pub = Publisher(redis_server.url, linger=SLOW)
    try:
        meddled = pub.emit("x", 0, user=1)
        meddled.set_result("0-1")
        same_write = pub.emit("x", 1, user=1)
        with pytest.raises(PublishError):
            pub.flush(10)
        assert "sender thread failed" in str(same_write.exception(0))
        later = pub.emit("x", 2, user=1)
        pub.flush(10)
        assert ids(r, "user:1") == [later.result(0)]
    finally:
        pub.close(10)


def test_flush_waits_for_what_was_handed_in_before_it_not_for_later_emits(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """Other threads emitting without a pause (a web server under load) must not keep flush,
    or close, waiting: it waits for what was handed in before it was called, as documented.
    Each write is held 5 ms (a Redis further away): two producers refill the queue meanwhile,
    so it never runs dry."""
    import threading
    import time

    with Publisher(redis_server.url, linger=0, max_queue=8) as pub:
        runner = pub._sender._runner
        real_run = runner.run

        def far_away(calls: Any) -> Any:
            time.sleep(0.005)
            return real_run(calls)

        runner.run = far_away  # type: ignore[method-assign]
        stop = threading.Event()

        def produce() -> None:
            while not stop.is_set():
                pub.emit("x", "load", room="quiz:load")

        producers = [threading.Thread(target=produce) for _ in range(2)]
        for producer in producers:
            producer.start()
        try:
            mine = pub.emit("x", "mine", user=4)
            pub.flush(5)  # PublishTimeout if it waited for the queue to run dry
            assert mine.done()
        finally:
            stop.set()
            for producer in producers:
                producer.join(10)
        assert ids(r, "user:4") == [mine.result(0)]


def test_an_emit_from_a_signal_handler_that_interrupts_an_emit_does_not_deadlock(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """A SIGTERM handler that emits ("going down") runs in the main thread between two
    bytecodes, possibly while that thread is inside an emit, holding the sender's lock: the
    handler's emit must not wait for a lock its own thread holds. (The signal is sent while the
    test holds the lock itself, as an emit would; in a child process, so that a deadlock fails
    the test instead of hanging it.)"""
    script = (
        "import os, signal, time\n"
        "from publisher import Publisher\n"
        f"pub = Publisher({redis_server.url!r}, linger=30.0)\n"
        "pub.emit('x', 'before', room='quiz:sig').result()\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: got.append(pub.emit('x', 'sig', room='quiz:sig')))\n"
        "with pub._sender._state.lock:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.05)\n"
        "print(got[0].result(10))\n"
        "pub.close(10)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=20, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        pytest.fail("the signal handler's emit deadlocked on the sender's lock")
    assert done.returncode == 0, done.stderr
    assert ids(r, "quiz:sig")[-1] == done.stdout.strip()
