"""`python -m publisher` against a real redis-server, and with Redis down."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest

from publisher import parse_position
from publisher.__main__ import main
from publisher.envelope import Event, decode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--redis-url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_emit_prints_the_position_and_reaches_the_room(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis_server.client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.ssubscribe("socket.io#/notifications#{user:42}#")
    time.sleep(0.05)
    code, out, err = cli(capsys, redis_server.url, "emit", "coins:earned",
                         '{"amount": 50, "reason": "x", "newBalance": 1}', "--user", "42")
    assert (code, err) == (0, "")
    position = out.strip()
    parse_position(position)
    deadline = time.monotonic() + 2
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_sharded_message(timeout=0.1)
    assert message is not None
    event = decode(message["data"])
    assert isinstance(event, Event)
    assert (event.name, event.data, event.position) == (
        "coins:earned", {"amount": 50, "reason": "x", "newBalance": 1}, position)
    assert client.xrange("ngw:{user:42}:h")[0][0].decode() == position
    pubsub.close()
    client.close()


def test_every_command(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_server.url
    assert cli(capsys, url, "emit", "news", '{"t": 1}', "--all")[0] == 0
    assert cli(capsys, url, "emit", "news", "[1, 2]", "--room", "classroom:7")[0] == 0
    code, out, _ = cli(capsys, url, "join", "42", "classroom:1", "classroom:7")
    assert code == 0
    joined = orjson.loads(out)  # {room: its position at the join}
    assert list(joined) == ["classroom:1", "classroom:7"]
    client = redis_server.client()
    assert joined["classroom:7"] == client.xrange("ngw:{classroom:7}:h")[0][0].decode()
    code, out, _ = cli(capsys, url, "leave", "42", "classroom:1")
    assert (code, list(orjson.loads(out))) == (0, ["classroom:1"])
    assert cli(capsys, url, "kick", "42")[1] == "0\n"  # sessions deleted: none saved
    assert client.exists("ngw:{user:42}:revoked")
    assert cli(capsys, url, "online", "42")[1] == "false\n"
    client.zadd("ngw:{replicas}:live", {"r1": int(time.time() * 1000)})
    client.hset("ngw:{replicas}:users", "r1", 2)
    client.sadd("ngw:{user:42}:on", "r1")
    assert cli(capsys, url, "online", "42")[1] == "true\n"
    assert cli(capsys, url, "count")[1] == "2\n"
    assert client.xlen("ngw:{classroom:7}:h") == 1
    client.close()


def test_prefixes_are_options(redis_server: RedisServer,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli(capsys, redis_server.url, "--key-prefix", "kp", "emit", "x", "{}",
                     "--room", "classroom:1")
    assert code == 0
    client = redis_server.client()
    assert client.keys("*") == [b"kp:{classroom:1}:h"]
    client.close()


def test_redis_down_exits_1_with_one_line(redis_server: RedisServer) -> None:
    redis_server.kill()
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", redis_server.url, "kick", "42"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("publisher: could not reach Redis at redis://127.0.0.1:")
    assert "REDIS_URL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_payload_from_stdin(redis_server: RedisServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", redis_server.url,
         "join", "7", "classroom:3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "publisher", "--redis-url", redis_server.url,
         "emit", "notification:read", "-", "--user", "7"],
        input='{"notificationId": "n1", "readAt": "2024-05-01T12:00:00Z"}',
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    client = redis_server.client()
    # One entry: the join went to user:7's channel too, but control messages keep no history.
    [(_, fields)] = client.xrange("ngw:{user:7}:h")
    assert orjson.loads(fields[b"m"])["d"]["notificationId"] == "n1"
    client.close()


def test_a_cluster_url_at_a_single_redis_exits_1_naming_the_fix(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, f"redis+cluster://127.0.0.1:{redis_server.port}", "emit", "x", "{}", "--all")
    assert (code, out) == (1, "")
    assert "without cluster support" in err
    assert f"redis://127.0.0.1:{redis_server.port}/0" in err
    assert err.count("\n") == 1
