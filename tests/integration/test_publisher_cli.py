"""`python -m publisher` against a real redis-server, and with Redis down."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest

from publisher import parse_offset
from publisher.__main__ import main
from publisher.envelope import Event, decode
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--redis-url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_emit_prints_the_offset_and_reaches_the_room(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis_server.client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("socket.io#/notifications#user:42#")
    time.sleep(0.05)
    code, out, err = cli(capsys, redis_server.url, "emit", "coins:earned",
                         '{"amount": 50, "reason": "x", "newBalance": 1}', "--user", "42")
    assert (code, err) == (0, "")
    offset = out.strip()
    parse_offset(offset)
    deadline = time.monotonic() + 2
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
    assert message is not None
    event = decode(message["data"])
    assert isinstance(event, Event)
    assert (event.ev, event.d, event.o) == (
        "coins:earned", {"amount": 50, "reason": "x", "newBalance": 1}, offset)
    pubsub.close()
    client.close()


def test_every_command(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_server.url
    assert cli(capsys, url, "emit", "news", '{"t": 1}', "--all")[0] == 0
    assert cli(capsys, url, "emit", "news", "[1, 2]", "--room", "classroom:7")[0] == 0
    code, out, _ = cli(capsys, url, "join", "42", "classroom:1", "classroom:2")
    assert code == 0
    parse_offset(out.strip())
    assert cli(capsys, url, "leave", "42", "classroom:1")[0] == 0
    assert cli(capsys, url, "kick", "42")[0] == 0
    client = redis_server.client()
    assert client.exists("ngw:revoked:42")
    assert cli(capsys, url, "online", "42")[1] == "false\n"
    client.zadd("ngw:replicas", {"r1": int(time.time() * 1000)})
    client.sadd("ngw:online:r1", "42", "43")
    assert cli(capsys, url, "online", "42")[1] == "true\n"
    assert cli(capsys, url, "count")[1] == "2\n"
    assert client.xlen("ngw:h:classroom:7") == 1
    client.close()


def test_prefixes_are_options(redis_server: RedisServer,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli(capsys, redis_server.url, "--key-prefix", "kp", "emit", "x", "{}",
                     "--room", "classroom:1")
    assert code == 0
    client = redis_server.client()
    assert client.exists("kp:clock", "kp:h:classroom:1") == 2
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
    [(_, fields)] = client.xrange("ngw:h:user:7")
    assert orjson.loads(fields[b"m"])["d"]["notificationId"] == "n1"
    client.close()
