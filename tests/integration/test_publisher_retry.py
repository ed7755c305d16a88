"""Failure handling of the sync Publisher against a real redis-server: Redis down, restarted,
script cache flushed, paused, refusing; and sharing one publisher across threads and a fork."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import redis

from publisher import Message, Publisher, PublishError, PublishTimeout, parse_position
from publisher.scripts import PUBLISH
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def pub(redis_server: RedisServer) -> Iterator[Publisher]:
    with Publisher(redis_server.url) as publisher:
        yield publisher


def test_redis_down_raises_publish_error_then_works_after_restart(
        redis_server: RedisServer, pub: Publisher) -> None:
    before = pub.emit("x", 1, user=1).result()
    redis_server.kill()
    with pytest.raises(PublishError) as info:
        pub.emit("x", 2, user=1).result()
    assert isinstance(info.value, ConnectionError)
    assert "after 4 attempt(s)" in str(info.value)
    with pytest.raises(PublishError):
        pub.emit_many([Message("x", 3, user=1)])
    with pytest.raises(PublishError):
        pub.join(1, "classroom:1")
    with pytest.raises(PublishError):
        pub.is_online(1)

    redis_server.start()
    after = pub.emit("x", 4, user=1).result()
    client = redis_server.client()
    assert [entry_id.decode() for entry_id, _ in client.xrange("ngw:{user:1}:h")] == [after]  # the data was lost
    assert after != before
    assert pub.is_online(1) is False
    client.close()


def test_retries_can_be_turned_off(redis_server: RedisServer) -> None:
    with Publisher(redis_server.url, retries=0) as pub:
        redis_server.kill()
        with pytest.raises(PublishError, match=r"after 1 attempt\(s\)"):
            pub.emit("x", 1, user=1).result()


def test_credentials_stay_out_of_errors(redis_server: RedisServer) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{redis_server.port}/0"
    redis_server.kill()
    with Publisher(url, retries=0) as pub, pytest.raises(PublishError) as info:
        pub.emit("x", 1, user=1).result()
    assert "hunter2" not in str(info.value)


def test_flushed_scripts_are_sent_again(redis_server: RedisServer, pub: Publisher) -> None:
    pub.emit("x", 1, user=1).result()
    client = redis_server.client()
    client.script_flush()
    assert client.script_exists(PUBLISH.sha) == [False]
    pub.emit("x", 2, user=1).result()
    pub.join(1, "classroom:1")
    pub.disconnect_user(1)
    assert pub.online_count() == 0
    assert pub.emit_many([Message("x", i, user=1) for i in range(3)])
    assert client.script_exists(PUBLISH.sha) == [True]
    client.close()


def test_a_stalled_redis_raises_publish_timeout(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with Publisher(redis_server.url, retries=1, socket_timeout=0.2) as pub:
        pub.emit("x", 1, user=1).result()  # connected and scripts loaded
        client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        with pytest.raises(PublishTimeout) as info:
            pub.emit("x", 2, user=1).result()
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, PublishError)
        client.execute_command("CLIENT", "UNPAUSE")
        assert pub.emit("x", 3, user=1).result()
    client.close()


def test_a_refused_command_is_not_retried(redis_server: RedisServer, pub: Publisher) -> None:
    client = redis_server.client()
    client.set("ngw:{user:1}:h", "not a stream")
    with pytest.raises(PublishError, match="WRONGTYPE") as info:
        pub.emit("x", 1, user=1).result()
    assert "attempt" not in str(info.value)
    assert client.get("ngw:{user:1}:h") == b"not a stream"
    client.delete("ngw:{user:1}:h")
    assert pub.emit("x", 1, user=1).result()
    client.close()


def test_a_given_client_is_used_and_left_open(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    with Publisher(client=client, key_prefix="given") as pub:
        position = pub.emit("x", 1, user=1).result()
        assert pub.client is client
    assert client.xrange("given:{user:1}:h")[0][0].decode() == position
    assert client.ping()  # still usable
    client.close()


def test_a_url_or_a_client_not_both(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher(redis_server.url, client=client)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher()
    client.close()


def test_threads_share_one_publisher(redis_server: RedisServer, pub: Publisher) -> None:
    positions: dict[int, list[str]] = {}

    def work(n: int) -> None:
        positions[n] = [pub.emit("x", i, room="classroom:shared" if n % 2 else f"user:{n}").result() for i in range(50)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = redis_server.client()
    for n in (0, 2, 4, 6):  # each thread's own room: its emits, in its order
        assert [entry_id.decode() for entry_id, _ in client.xrange(f"ngw:{{user:{n}}}:h")] == positions[n]
    shared = [entry_id.decode() for entry_id, _ in client.xrange("ngw:{classroom:shared}:h")]
    assert sorted(shared) == sorted(p for n in (1, 3, 5, 7) for p in positions[n])
    for n in (1, 3, 5, 7):  # interleaved, each thread's in its order
        assert [p for p in shared if p in set(positions[n])] == positions[n]
    client.close()


def _emit_in_child(pub: Publisher, results: multiprocessing.Queue[str]) -> None:
    results.put(pub.emit("x", "from the child", user=1).result())


def test_a_forked_child_gets_its_own_connections(pub: Publisher) -> None:
    first = pub.emit("x", 1, user=1).result()  # the parent holds a connection now
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_emit_in_child, args=(pub, results))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    from_child = results.get(timeout=5)
    last = pub.emit("x", 2, user=1).result()  # the parent's connection was not disturbed
    assert [parse_position(p) for p in (first, from_child, last)] == sorted(
        parse_position(p) for p in (first, from_child, last))
    assert len({first, from_child, last}) == 3
