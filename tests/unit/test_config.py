"""Settings: every bad value stops the start with a message naming the setting."""

from typing import Any

import pytest

from gateway.config import SETTINGS, ConfigError, load_settings

SECRET = "s" * 40


def test_defaults_with_a_secret() -> None:
    s = load_settings({"JWT_SECRET": SECRET})
    assert s.port == 8080
    assert s.host == "0.0.0.0"
    assert s.redis_url == ""
    assert s.jwt_algorithms == ()  # unset: each key's own default (HS256 for a secret)
    assert s.jwt_require_exp is True
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


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_secret_and_public_key_together_each_keep_their_family() -> None:
    # Allowed since keys rotate (HS256 -> ES256, say): each key verifies its own algorithms only,
    # so mixing them opens no key confusion (tests/unit/test_auth_keys.py).
    s = load_settings({"JWT_SECRET": SECRET, "JWT_PUBLIC_KEY": _pem()})
    assert s.jwt_secret == SECRET
    assert s.jwt_public_key


def test_a_public_key_that_does_not_load_names_its_setting() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigError, match=r"^JWT_PUBLIC_KEY: block 1 \(PUBLIC KEY\) does not load"):
        load_settings({"JWT_PUBLIC_KEY": pem})


def test_algorithms_that_no_key_can_use_name_jwt_algorithms() -> None:
    with pytest.raises(ConfigError, match=r"^JWT_ALGORITHMS: lists no HS algorithm"):
        load_settings({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": "RS256"})
    with pytest.raises(ConfigError, match=r"^JWT_ALGORITHMS: lists none of ES256"):
        load_settings({"JWT_PUBLIC_KEY": _pem(), "JWT_ALGORITHMS": "RS256"})


def test_a_short_secret_stops_the_start_outside_dev() -> None:
    # Issue 11: the README says a bad value stops the start; a short secret only warned.
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: 5 bytes; use at least 32"):
        load_settings({"JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match=r"^JWT_SECRETS \(item 2\): 5 bytes"):
        load_settings({"JWT_SECRET": SECRET, "JWT_SECRETS": f"a:{SECRET}x,b:short"})
    dev = load_settings({"JWT_SECRET": "short"}, dev=True)
    assert any("JWT_SECRET is 5 bytes" in a for a in dev.advisories())


def test_publish_api_key_has_a_minimum_length() -> None:
    with pytest.raises(ConfigError, match=r"^PUBLISH_API_KEY: 23 bytes; use at least 24"):
        load_settings({"JWT_SECRET": SECRET, "PUBLISH_API_KEY": "k" * 23})
    assert load_settings({"JWT_SECRET": SECRET, "PUBLISH_API_KEY": "k" * 24}).publish_api_key == "k" * 24
    assert load_settings({"PUBLISH_API_KEY": "short"}, dev=True).publish_api_key == "short"


@pytest.mark.parametrize(("env", "named"), [
    ({"JWT_SECRET": "example-only-0000000000000000000000000000000000000000000000000000"}, "JWT_SECRET"),
    ({"JWT_SECRET": SECRET,
      "JWT_SECRETS": "old:dev-only-insecure-jwt-secret-change-me-0123456789"}, "JWT_SECRETS (item 1)"),
    ({"JWT_SECRET": SECRET, "PUBLISH_API_KEY": "example-only-publish-key-change-me"}, "PUBLISH_API_KEY"),
    ({"JWT_SECRET": SECRET, "PUBLISH_API_KEY": "dev-only-insecure-publish-key"}, "PUBLISH_API_KEY"),
    ({"JWT_SECRET": SECRET, "REDIS_URL": "redis://:password@redis:6379/0"}, "REDIS_URL (password)"),
    ({"JWT_SECRET": SECRET, "REDIS_URL": "redis://redis:6379/0?password=password"}, "REDIS_URL (password)"),
    ({"JWT_SECRET": SECRET, "REDIS_URL": "redis+sentinel://s:26379/0/m?sentinel_password=password"},
     "REDIS_URL (sentinel_password)"),
])
def test_example_credentials_stop_the_start_outside_dev(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(named + ": this value is a public example from the repository")
    assert all(value not in message for value in env.values() if value != SECRET), "never echo the value"
    assert load_settings(env, dev=True).dev


def test_dev_listens_on_loopback_unless_host_is_set() -> None:
    assert load_settings({}, dev=True).host == "127.0.0.1"
    assert not load_settings({}, dev=True).beyond_loopback
    assert load_settings({"GATEWAY_DEV": "true"}).host == "127.0.0.1"
    assert load_settings({"HOST": "0.0.0.0"}, dev=True).beyond_loopback
    assert load_settings({}, {"host": "::"}, dev=True).beyond_loopback
    assert load_settings({"JWT_SECRET": SECRET}).host == "0.0.0.0"


def test_dev_says_whether_it_made_the_secret_up() -> None:
    assert load_settings({}, dev=True).jwt_secret_generated
    kept = load_settings({"JWT_SECRET": SECRET}, dev=True)
    assert (kept.jwt_secret, kept.jwt_secret_generated) == (SECRET, False)


def test_jwt_secrets_items_and_kids() -> None:
    s = load_settings({"JWT_SECRETS": f"2024:{SECRET}a, {SECRET}b ,next:{SECRET}c"})
    assert s.jwt_secrets == (("2024", SECRET + "a"), (None, SECRET + "b"), ("next", SECRET + "c"))
    assert s.signing_secret == ("2024", SECRET + "a")
    for bad, why in [(f"a b:{SECRET}", "item 1: the kid"), ("k:", "no secret"),
                     (f"k:{SECRET},k:{SECRET}x", "same kid")]:
        with pytest.raises(ConfigError, match=rf"^JWT_SECRETS: .*{why}"):
            load_settings({"JWT_SECRETS": bad})


@pytest.mark.parametrize(("url", "ok"), [
    ("https://idp.example.com/.well-known/jwks.json", True),
    ("http://127.0.0.1:8000/jwks", True),
    ("http://[::1]:8000/jwks", True),
    ("http://localhost/jwks", True),
    ("http://idp.example.com/jwks", False),
    ("ftp://idp.example.com/jwks", False),
    ("file://host/etc/jwks.json", False),
])
def test_jwks_url_schemes(url: str, ok: bool) -> None:
    if ok:
        assert load_settings({"JWT_JWKS_URL": url}).jwt_jwks_url == url
    else:
        with pytest.raises(ConfigError, match=r"^JWT_JWKS_URL: "):
            load_settings({"JWT_JWKS_URL": url})


def test_a_jwks_file_is_read_and_checked_at_start(tmp_path: Any) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(ConfigError, match=r"^JWT_JWKS_URL: cannot read"):
        load_settings({"JWT_JWKS_URL": missing.as_uri()})
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}')
    with pytest.raises(ConfigError, match=r"holds no key.*5 bytes") as info:
        load_settings({"JWT_JWKS_URL": bad.as_uri()})
    assert "c2hvcnQ" not in str(info.value)
    good = tmp_path / "good.json"
    good.write_text('{"keys": [{"kty": "oct", "kid": "a", "k": "' + "A" * 43 + '"}]}')
    assert load_settings({"JWT_JWKS_URL": good.as_uri()}).jwt_jwks_document == good.read_bytes()
    # The start check reads no more of a file than the refresher would accept (1 MiB).
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"keys": [], "pad": "' + b"x" * (1 << 20) + b'"}')
    with pytest.raises(ConfigError, match=r"^JWT_JWKS_URL: .*huge.json: the document is over 1048576 bytes"):
        load_settings({"JWT_JWKS_URL": huge.as_uri()})


def test_jwt_require_exp_parses_as_a_flag() -> None:
    assert load_settings({"JWT_SECRET": SECRET, "JWT_REQUIRE_EXP": "false"}).jwt_require_exp is False
    with pytest.raises(ConfigError, match=r"^JWT_REQUIRE_EXP: must be true or false"):
        load_settings({"JWT_SECRET": SECRET, "JWT_REQUIRE_EXP": "maybe"})


def test_public_view_masks_secrets() -> None:
    s = load_settings({"JWT_SECRET": SECRET, "REDIS_URL": "redis://:hunter2@localhost:6379/0"})
    view = s.public_view()
    assert SECRET not in str(view)
    assert "hunter2" not in str(view)


def test_public_view_masks_every_credential_of_a_url() -> None:
    # Issue 12, item 6: only the userinfo password was masked; ?password= and
    # ?sentinel_password= were logged in clear.
    s = load_settings({
        "JWT_SECRET": SECRET, "JWT_SECRETS": "k1:" + "q" * 40, "PUBLISH_API_KEY": "p" * 30,
        "REDIS_URL": "redis+sentinel://u:pw-userinfo@s1:26379,s2/0/mymaster"
                     "?sentinel_password=pw-sentinel&password=pw-query",
        "JWT_JWKS_URL": "https://jwks-user:pw-jwks@idp.example/jwks?access_token=pw-token",
    })
    text = str(s.public_view())
    for secret in (SECRET, "q" * 40, "p" * 30, "pw-userinfo", "pw-sentinel", "pw-query", "pw-jwks", "pw-token"):
        assert secret not in text, secret
    assert "s1:26379,s2/0/mymaster" in text, "the address itself stays readable"


def test_every_setting_has_a_unique_env_name_and_doc() -> None:
    envs = [s.env for s in SETTINGS]
    assert len(envs) == len(set(envs))
    assert all(s.doc for s in SETTINGS)
