"""Failure handling of the sync Publisher against a real redis-server: Redis down, restarted,
script cache flushed, paused, refusing; and sharing one publisher across threads and a fork."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import redis

from publisher import Message, Publisher, PublishError, PublishTimeout, parse_offset
from publisher.scripts import PUBLISH
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def pub(redis_server: RedisServer) -> Iterator[Publisher]:
    with Publisher(redis_server.url) as publisher:
        yield publisher


def test_redis_down_raises_publish_error_then_works_after_restart(
        redis_server: RedisServer, pub: Publisher) -> None:
    before = pub.emit("x", 1, user=1)
    redis_server.kill()
    with pytest.raises(PublishError) as info:
        pub.emit("x", 2, user=1)
    assert isinstance(info.value, ConnectionError)
    assert "after 4 attempt(s)" in str(info.value)
    with pytest.raises(PublishError):
        pub.emit_many([Message("x", 3, user=1)])
    with pytest.raises(PublishError):
        pub.join(1, "classroom:1")
    with pytest.raises(PublishError):
        pub.is_online(1)

    redis_server.start()
    after = pub.emit("x", 4, user=1)
    assert parse_offset(after).epoch != parse_offset(before).epoch  # the data was lost
    assert pub.is_online(1) is False


def test_retries_can_be_turned_off(redis_server: RedisServer) -> None:
    with Publisher(redis_server.url, retries=0) as pub:
        redis_server.kill()
        with pytest.raises(PublishError, match=r"after 1 attempt\(s\)"):
            pub.emit("x", 1, user=1)


def test_credentials_stay_out_of_errors(redis_server: RedisServer) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{redis_server.port}/0"
    redis_server.kill()
    with Publisher(url, retries=0) as pub, pytest.raises(PublishError) as info:
        pub.emit("x", 1, user=1)
    assert "hunter2" not in str(info.value)


def test_flushed_scripts_are_sent_again(redis_server: RedisServer, pub: Publisher) -> None:
    pub.emit("x", 1, user=1)
    client = redis_server.client()
    client.script_flush()
    assert client.script_exists(PUBLISH.sha) == [False]
    pub.emit("x", 2, user=1)
    pub.join(1, "classroom:1")
    pub.disconnect_user(1)
    assert pub.online_count() == 0
    assert pub.emit_many([Message("x", i, user=1) for i in range(3)])
    assert client.script_exists(PUBLISH.sha) == [True]
    client.close()


def test_a_stalled_redis_raises_publish_timeout(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with Publisher(redis_server.url, retries=1, socket_timeout=0.2) as pub:
        pub.emit("x", 1, user=1)  # connected and scripts loaded
        client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        with pytest.raises(PublishTimeout) as info:
            pub.emit("x", 2, user=1)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, PublishError)
        client.execute_command("CLIENT", "UNPAUSE")
        assert pub.emit("x", 3, user=1)
    client.close()


def test_a_refused_command_is_not_retried(redis_server: RedisServer, pub: Publisher) -> None:
    client = redis_server.client()
    client.set("ngw:clock", "not a hash")
    with pytest.raises(PublishError, match="WRONGTYPE") as info:
        pub.emit("x", 1, user=1)
    assert "attempt" not in str(info.value)
    client.delete("ngw:clock")
    assert pub.emit("x", 1, user=1)
    client.close()


def test_a_given_client_is_used_and_left_open(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    with Publisher(client=client, key_prefix="given") as pub:
        offset = pub.emit("x", 1, user=1)
    assert client.xlen("given:h:user:1") == 1
    assert client.ping()  # still usable
    assert parse_offset(offset).seq == 1
    client.close()


def test_a_url_or_a_client_not_both(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher(redis_server.url, client=client)
    with pytest.raises(TypeError, match="either a Redis URL or client="):
        Publisher()
    client.close()


def test_threads_share_one_publisher(pub: Publisher) -> None:
    offsets: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        mine = [pub.emit("x", i, user=n) for i in range(50)]
        with lock:
            offsets.extend(mine)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = sorted(parse_offset(o).seq for o in offsets)
    assert seqs == list(range(1, 401))


def _emit_in_child(pub: Publisher, results: multiprocessing.Queue[str]) -> None:
    results.put(pub.emit("x", "from the child", user=1))


def test_a_forked_child_gets_its_own_connections(pub: Publisher) -> None:
    first = pub.emit("x", 1, user=1)  # the parent holds a connection now
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_emit_in_child, args=(pub, results))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    from_child = results.get(timeout=5)
    last = pub.emit("x", 2, user=1)  # the parent's connection was not disturbed
    assert [parse_offset(o).seq for o in (first, from_child, last)] == [1, 2, 3]
