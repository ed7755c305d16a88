"""Publishing through each kind of REDIS_URL that needs a real server to prove: a Unix socket,
and Sentinel (a real `redis-server --sentinel` watching a real master, with a password)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from publisher import AsyncPublisher, Publisher, PublishError
from tests.support.ports import free_port, wait_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_unix_socket() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ngw-unix-"))
    socket_path = folder / "redis.sock"
    server = RedisServer(None, "--unixsocket", str(socket_path), "--unixsocketperm", "700").start()
    try:
        with Publisher(f"unix://{socket_path}?db=3") as pub:
            position = pub.emit("x", 1, user=1).result()
        client = redis.Redis(unix_socket_path=str(socket_path), db=3)
        assert client.xrange("ngw:{user:1}:h")[0][0].decode() == position
        client.close()
    finally:
        server.stop()
        socket_path.unlink(missing_ok=True)
        folder.rmdir()


class Sentinel:
    """One `redis-server --sentinel` process monitoring `master` as service "mymaster"."""

    def __init__(self, master_port: int, password: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ngw-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            f"sentinel auth-pass mymaster {password}\n"
            "sentinel down-after-milliseconds mymaster 5000\n"
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel",
             "--logfile", str(self.dir / "sentinel.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 10)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster") is None:
            assert time.monotonic() < deadline, "sentinel never knew its master"
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()


@pytest.fixture
def sentinel(redis_server: RedisServer) -> Iterator[Sentinel]:
    client = redis_server.client()
    client.config_set("requirepass", "s3cret")
    client.close()
    watcher = Sentinel(redis_server.port, "s3cret")
    try:
        yield watcher
    finally:
        watcher.stop()


def test_sentinel(redis_server: RedisServer, sentinel: Sentinel) -> None:
    url = f"redis+sentinel://:s3cret@127.0.0.1:{sentinel.port}/2/mymaster"
    with Publisher(url) as pub:
        position = pub.emit("x", 1, user=1).result()
        pub.join(1, "classroom:1")
        assert pub.is_online(1) is False
    master = redis.Redis(port=redis_server.port, password="s3cret", db=2)
    assert master.xrange("ngw:{user:1}:h")[0][0].decode() == position
    master.close()


async def test_sentinel_async(redis_server: RedisServer, sentinel: Sentinel) -> None:
    url = f"redis+sentinel://:s3cret@127.0.0.1:{sentinel.port}/0/mymaster"
    async with AsyncPublisher(url) as pub:
        position = await pub.emit("x", 1, user=1)
    master = redis.asyncio.Redis(port=redis_server.port, password="s3cret")
    assert (await master.xrange("ngw:{user:1}:h"))[0][0].decode() == position
    await master.aclose()


def test_sentinel_writes_queued_emits_together(redis_server: RedisServer, sentinel: Sentinel) -> None:
    url = f"redis+sentinel://:s3cret@127.0.0.1:{sentinel.port}/0/mymaster"
    with Publisher(url, linger=30.0) as pub:  # written because of the flush, not the linger
        futures = [pub.emit("x", i, user=i % 3) for i in range(9)]
        pub.flush()
    master = redis.Redis(port=redis_server.port, password="s3cret")
    try:
        for user in range(3):
            stored = [entry_id.decode() for entry_id, _ in master.xrange(f"ngw:{{user:{user}}}:h")]
            assert stored == [f.result() for f in futures[user::3]]
        assert master.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    finally:
        master.close()


def test_sentinel_wrong_password(sentinel: Sentinel) -> None:
    url = f"redis+sentinel://:wrong@127.0.0.1:{sentinel.port}/0/mymaster"
    with Publisher(url, retries=0) as pub, pytest.raises(PublishError) as info:
        pub.emit("x", 1, user=1).result()
    assert "wrong" not in str(info.value)
    assert "/0/mymaster" in str(info.value)
