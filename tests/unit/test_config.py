"""Settings: every bad value stops the start with a message naming the setting."""

import pytest

from gateway.config import SETTINGS, ConfigError, load_settings

SECRET = "s" * 40


def test_defaults_with_a_secret() -> None:
    s = load_settings({"JWT_SECRET": SECRET})
    assert s.port == 8080
    assert s.host == "0.0.0.0"
    assert s.redis_url == ""
    assert s.jwt_algorithms == ("HS256",)
    assert s.frontend_url == ("http://localhost:5173",)
    assert s.recovery_window == 120
    assert s.drain_seconds == 20
    assert (s.ping_interval, s.ping_timeout) == (25000, 20000)


def test_refuses_to_start_without_a_key() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET: not set"):
        load_settings({})


def test_dev_makes_an_unguessable_secret() -> None:
    a = load_settings({}, dev=True)
    b = load_settings({}, dev=True)
    assert a.dev
    assert len(a.jwt_secret) >= 32
    assert a.jwt_secret != b.jwt_secret


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"FRONTEND_URL": "localhost:5173"}, "FRONTEND_URL"),
        ({"RECOVERY_WINDOW": "-1"}, "RECOVERY_WINDOW"),
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"JWT_ALGORITHMS": "RS256"}, "JWT_ALGORITHMS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"TRUSTED_PROXIES": "not-a-net"}, "TRUSTED_PROXIES"),
        ({"JWT_PUBLIC_KEY": "not pem"}, "JWT_PUBLIC_KEY"),
        ({"JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, "JWT_PUBLIC_KEY_FILE"),
    ],
)
def test_bad_setting_names_itself(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"JWT_SECRET": SECRET, **env})
    assert str(info.value).startswith(named + ":")


def test_flag_wins_and_is_named() -> None:
    s = load_settings({"JWT_SECRET": SECRET, "PORT": "1"}, {"port": "9000"})
    assert s.port == 9000
    with pytest.raises(ConfigError, match=r"^--port:"):
        load_settings({"JWT_SECRET": SECRET}, {"port": "x"})


def test_secret_and_public_key_together_are_refused() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"JWT_SECRET": SECRET, "JWT_PUBLIC_KEY": pem})


def test_public_key_defaults_to_asymmetric_algorithms() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
    s = load_settings({"JWT_PUBLIC_KEY": pem})
    assert set(s.jwt_algorithms) == {"RS256", "ES256"}


def test_short_secret_is_an_advisory_not_a_refusal() -> None:
    s = load_settings({"JWT_SECRET": "short"})
    assert any("JWT_SECRET" in a for a in s.advisories())


def test_public_view_masks_secrets() -> None:
    s = load_settings({"JWT_SECRET": SECRET, "REDIS_URL": "redis://:hunter2@localhost:6379/0"})
    view = s.public_view()
    assert SECRET not in str(view)
    assert "hunter2" not in str(view)


def test_every_setting_has_a_unique_env_name_and_doc() -> None:
    envs = [s.env for s in SETTINGS]
    assert len(envs) == len(set(envs))
    assert all(s.doc for s in SETTINGS)
