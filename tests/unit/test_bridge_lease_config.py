"""The bridge's lease (publisher.bridge.lease) on a fake transport and clock, and its settings
(publisher.bridge.config): errors name the setting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from publisher.bridge import config
from publisher.bridge.lease import ACTIVE, LEASE, RELEASE, STANDBY, Lease
from publisher.commands import Call
from publisher.errors import PublishError


class FakeRedis:
    """The lease key in memory, with the scripts' semantics; `down` makes calls fail."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.holder: str | None = None
        self.expires = 0.0
        self.down = False
        self.where = "fake"

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        if self.down:
            raise PublishError("Redis unreachable")
        (call,) = calls
        _, _, token, *rest = call.args
        now = self.clock[0]
        if self.holder is not None and now >= self.expires:
            self.holder = None
        if call.script is LEASE:
            if self.holder in (None, token):
                self.holder, self.expires = str(token), now + int(rest[0]) / 1000
                return [1]
            return [0]
        assert call.script is RELEASE
        if self.holder == token:
            self.holder = None
            return [1]
        return [0]

    async def close(self) -> None:
        pass


def lease(redis: FakeRedis, clock: list[float], name: str) -> Lease:
    return Lease(redis, "k", name, ttl_ms=5000, renew_ms=1000, clock=lambda: clock[0])  # type: ignore[arg-type]


async def test_one_holder_and_a_local_deadline_before_the_key_expires() -> None:
    clock = [100.0]
    redis = FakeRedis(clock)
    a, b = lease(redis, clock, "a"), lease(redis, clock, "b")
    assert await a.attempt() is True
    assert await b.attempt() is False
    assert (a.role, b.role) == (ACTIVE, STANDBY)
    # Redis goes away for a: it stops delivering before its key expires, so b cannot overlap.
    redis.down = True
    clock[0] += 3.5
    assert await a.attempt() is False
    assert not a.active()
    assert clock[0] < redis.expires
    redis.down = False
    assert await b.attempt() is False  # the key still stands
    clock[0] = redis.expires
    assert await b.attempt() is True
    assert b.active()
    assert await a.attempt() is False


async def test_release_hands_over_at_once() -> None:
    clock = [0.0]
    redis = FakeRedis(clock)
    a, b = lease(redis, clock, "a"), lease(redis, clock, "b")
    assert await a.attempt()
    await a.release()
    assert not a.active()
    assert await b.attempt()


def test_settings_defaults_and_flags() -> None:
    s = config.load({}, env={})
    assert (s.emitter_prefix, s.socketio_channel, s.channel_prefix, s.port) == \
        ("socket.io", "socketio", "socket.io", 9100)
    assert s.lease_key == "ngw:{bridge}:lease"
    s = config.load({"BRIDGE_PORT": "9200"}, env={"BRIDGE_PORT": "1", "REDIS_URL": "redis+cluster://a:1,b:2"})
    assert s.port == 9200
    assert s.redis_url == "redis+cluster://a:1,b:2"
    assert "secret" not in str(config.load({}, env={"REDIS_URL": "redis://:secret@h:1/0"}).public_view())


@pytest.mark.parametrize(("env", "setting"), [
    ({"REDIS_URL": "http://x"}, "REDIS_URL"),
    ({"REDIS_URL": "redis+cluster://"}, "REDIS_URL"),
    ({"BRIDGE_PORT": "x"}, "BRIDGE_PORT"),
    ({"BRIDGE_PORT": "70000"}, "BRIDGE_PORT"),
    ({"BRIDGE_LEASE_TTL_MS": "500"}, "BRIDGE_LEASE_TTL_MS"),
    ({"BRIDGE_LEASE_RENEW_MS": "2000"}, "BRIDGE_LEASE_RENEW_MS"),
    ({"BRIDGE_EMITTER_PREFIX": "a{b}"}, "BRIDGE_EMITTER_PREFIX"),
    ({"CHANNEL_PREFIX": "a#b"}, "CHANNEL_PREFIX"),
    ({"BRIDGE_SOURCES": "kafka"}, "BRIDGE_SOURCES"),
    ({"RECOVERY_WINDOW": "-1"}, "RECOVERY_WINDOW"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"BRIDGE_SOCKETIO_CHANNEL": "socket.io#x"}, "BRIDGE_SOCKETIO_CHANNEL"),
])
def test_a_bad_setting_is_named(env: dict[str, str], setting: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load({}, env=env)
    assert str(caught.value).startswith(setting + ":"), caught.value


def test_the_command_line_names_a_bad_setting(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from publisher.__main__ import main

    monkeypatch.delenv("BRIDGE_PORT", raising=False)
    assert main(["bridge", "--port", "http"]) == 2
    assert capsys.readouterr().err.startswith("publisher: BRIDGE_PORT: 'http' is not an integer")
    assert main(["--redis-url", "ftp://x", "bridge"]) == 2
    assert capsys.readouterr().err.startswith("publisher: REDIS_URL:")
