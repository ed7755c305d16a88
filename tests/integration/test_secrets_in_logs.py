"""No secret reaches the log of a real replica (issue 12, item 6).

The "listening" line masked only the userinfo password of REDIS_URL; `?password=` and
`?sentinel_password=` were logged in clear. Here a `gateway` process starts with a secret in
every place a setting can hold one, runs into the failures that log the most (Redis refusing or
absent, the JWKS URL unreachable), and its whole output is searched for each secret.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator

import pytest
import redis

from gateway.logs import JsonFormatter
from tests.support.checks import wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


def secret(tag: str) -> str:
    """Distinct, greppable, and long enough for every minimum."""
    return f"{tag}-{secrets.token_hex(20)}"


@pytest.fixture
def guarded_redis() -> Iterator[tuple[RedisServer, str]]:
    """A redis-server that requires a password (set after start: the start-up PING has none)."""
    password = secret("redis-userinfo")
    server = RedisServer().start()
    client = redis.Redis(port=server.port)
    try:
        client.config_set("requirepass", password)
    finally:
        client.close()
    try:
        yield server, password
    finally:
        server.stop()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def assert_no_secret(log: str, values: dict[str, str]) -> None:
    leaked = {name: value for name, value in values.items() if value in log}
    assert not leaked, f"secrets in the log: {sorted(leaked)}\n{log}"


def test_no_secret_in_the_log_of_a_replica_on_a_password_redis(guarded_redis: tuple[RedisServer, str]) -> None:
    server, redis_password = guarded_redis
    values = {
        "JWT_SECRET": secret("jwt-secret"),
        "JWT_SECRETS kid item": secret("jwt-next"),
        "JWT_SECRETS bare item": secret("jwt-bare"),
        "PUBLISH_API_KEY": secret("publish-key"),
        "REDIS_URL userinfo": redis_password,
        "REDIS_URL ?password=": secret("redis-query"),
        "JWT_JWKS_URL userinfo": secret("jwks-userinfo"),
        "JWT_JWKS_URL ?access_token=": secret("jwks-token"),
    }
    env = {
        "JWT_SECRET": values["JWT_SECRET"],
        "JWT_SECRETS": f"next:{values['JWT_SECRETS kid item']},{values['JWT_SECRETS bare item']}",
        "PUBLISH_API_KEY": values["PUBLISH_API_KEY"],
        "REDIS_URL": f"redis://default:{redis_password}@127.0.0.1:{server.port}/0"
                     f"?password={values['REDIS_URL ?password=']}",
        "JWT_JWKS_URL": f"https://jwks:{values['JWT_JWKS_URL userinfo']}@127.0.0.1:{free_port()}/jwks"
                        f"?access_token={values['JWT_JWKS_URL ?access_token=']}",
        "LOG_LEVEL": "debug",
    }
    replica = GatewayProcess(env, name="secrets-in-logs")
    try:
        replica.start()
        replica.wait_ready()
        lines = wait_until(lambda: [r for r in json_lines(replica.log_text()) if r.get("msg") == "listening"],
                           10, "the listening line")
        settings = lines[0]["settings"]
        assert isinstance(settings, dict)
        assert settings["redis_url"] == f"redis://default:***@127.0.0.1:{server.port}/0?password=***"
        assert settings["jwt_secret"] == settings["jwt_secrets"] == settings["publish_api_key"] == "***"
    finally:
        replica.stop()
    assert_no_secret(replica.log_text(), values)


def test_no_secret_in_the_log_of_a_replica_whose_sentinels_do_not_answer() -> None:
    values = {
        "JWT_SECRET": secret("jwt-secret"),
        "REDIS_URL userinfo": secret("master-password"),
        "REDIS_URL ?sentinel_password=": secret("sentinel-password"),
    }
    url = (f"redis+sentinel://:{values['REDIS_URL userinfo']}@127.0.0.1:{free_port()}/0/mymaster"
           f"?sentinel_password={values['REDIS_URL ?sentinel_password=']}")
    replica = GatewayProcess({"JWT_SECRET": values["JWT_SECRET"], "REDIS_URL": url}, name="sentinel-logs")
    try:
        replica.start()
        # the replica keeps trying, and says so, with the address (not the credentials)
        wait_until(lambda: "cannot reach Redis" in replica.log_text(), 20, "the unreachable-Redis error")
        assert replica.alive()
    finally:
        replica.stop()
    assert_no_secret(replica.log_text(), values)


def test_dev_mode_banner_shows_no_configured_secret(guarded_redis: tuple[RedisServer, str]) -> None:
    # The banner prints a token and the publish key on purpose (that is what it is for), never
    # the JWT_SECRET it signs with nor the Redis password.
    server, redis_password = guarded_redis
    jwt_secret = secret("jwt-secret")
    replica = GatewayProcess({"JWT_SECRET": jwt_secret,
                              "REDIS_URL": f"redis://:{redis_password}@127.0.0.1:{server.port}/0"},
                             args=["--dev"], name="dev-banner")
    try:
        replica.start()
        replica.wait_ready()
        wait_until(lambda: "publish key:" in replica.log_text(), 10, "the dev banner")
    finally:
        replica.stop()
    log = replica.log_text()
    assert "the CONFIGURED keys (JWT_SECRET...) are kept" in log
    assert f"the CONFIGURED REDIS_URL is kept (redis://:***@127.0.0.1:{server.port}/0)" in log
    assert_no_secret(log, {"JWT_SECRET": jwt_secret, "REDIS_URL password": redis_password})


def test_fields_named_like_credentials_never_reach_a_json_line() -> None:
    record = logging.makeLogRecord({"msg": "x", "jwt_secret": "s1", "publish_api_key": "s2",
                                    "sentinel_password": "s3", "Authorization": "s4", "user_id": "7"})
    line = json.loads(JsonFormatter().format(record))
    assert line["user_id"] == "7"
    assert not {"s1", "s2", "s3", "s4"} & set(map(str, line.values()))
