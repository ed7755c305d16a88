"""Credentials at start: which JWT keys verify tokens, and why a secret gets refused.

`load_settings` calls two things from here once every setting is parsed:
- `resolve_jwt` loads every configured verification key (JWT_SECRET, JWT_SECRETS, JWT_PUBLIC_KEY
  or JWT_PUBLIC_KEY_FILE, a file:// JWT_JWKS_URL) once, so that a bad key stops the start naming
  its setting instead of failing the first handshake; with none, it refuses to start, or under
  --dev makes an ephemeral JWT_SECRET up;
- `refuse_weak_credentials` (outside --dev) refuses a secret, key or Redis password copied from
  the repository's examples (`EXAMPLE_SECRETS`), an HMAC key under `MIN_SECRET_BYTES` and a
  publish key under `MIN_PUBLISH_KEY_BYTES`.

Both work on the dict of parsed values before `Settings` is built, and raise `ConfigError`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gateway.config_parsers import ConfigError, algorithms
from gateway.policy.keys import (
    HMAC_ALGORITHMS,
    AlgorithmMismatch,
    jwks_keys,
    pem_keys,
    read_jwks_file,
    secret_key,
)

MIN_SECRET_BYTES = 32
MIN_PUBLISH_KEY_BYTES = 24

# Every secret, key and password that appears in the repository's examples (docker-compose.yml,
# deploy/k8s/secret.example.yaml, the docs): public, so worthless as credentials. Outside --dev
# the replica refuses to start with any of them. tests/unit/test_example_secrets.py scans the
# example files and fails when one of their values is missing here.
EXAMPLE_SECRETS: frozenset[str] = frozenset({
    # docker-compose.yml (defaults when .env does not set them)
    "dev-only-insecure-jwt-secret-change-me-0123456789",
    "dev-only-insecure-publish-key",
    # deploy/k8s/secret.example.yaml
    "example-only-0000000000000000000000000000000000000000000000000000",
    "example-only-publish-key-change-me",
    # the Redis URL of the example Secret's comment: redis://:password@host:6379/0
    "password",
})


def resolve_jwt(values: dict[str, Any], *, dev: bool) -> None:
    """Load every configured key once, so that a bad one stops the start naming its setting."""
    key_file = values["jwt_public_key_file"]
    if key_file:
        if values["jwt_public_key"]:
            raise ConfigError("JWT_PUBLIC_KEY_FILE: set either JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both")
        try:
            values["jwt_public_key"] = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot read {key_file}: {exc.strerror}") from None
    allowed: frozenset[str] | None = None
    if values["jwt_algorithms"]:
        try:
            values["jwt_algorithms"] = algorithms(values["jwt_algorithms"])
        except ValueError as exc:
            raise ConfigError(f"JWT_ALGORITHMS: {exc}") from None
        allowed = frozenset(values["jwt_algorithms"])
    else:
        values["jwt_algorithms"] = ()
    if values["jwt_secret"]:
        _key_or_config_error("JWT_SECRET", lambda: secret_key("JWT_SECRET", None, values["jwt_secret"],
                                                                allowed or HMAC_ALGORITHMS))
    if values["jwt_secrets"]:
        _key_or_config_error("JWT_SECRETS", lambda: [
            secret_key(f"JWT_SECRETS item {i}", kid, secret, allowed or HMAC_ALGORITHMS)
            for i, (kid, secret) in enumerate(values["jwt_secrets"], start=1)])
    public_key = values["jwt_public_key"]
    if public_key:
        source = "JWT_PUBLIC_KEY_FILE" if key_file else "JWT_PUBLIC_KEY"
        _key_or_config_error(source, lambda: pem_keys(source, public_key, allowed))
    if values["jwt_jwks_url"].startswith("file:"):
        values["jwt_jwks_document"] = _read_jwks_file(values["jwt_jwks_url"], allowed)
    has_key = bool(values["jwt_secret"] or values["jwt_secrets"] or public_key or values["jwt_jwks_url"])
    if not has_key:
        if not dev:
            raise ConfigError(
                "JWT_SECRET: not set. The gateway refuses to start without a way to verify tokens: "
                "set JWT_SECRET (HS256, 32+ random bytes, e.g. `openssl rand -hex 32`), "
                "JWT_PUBLIC_KEY / JWT_PUBLIC_KEY_FILE (RS256/ES256) or JWT_JWKS_URL, "
                "or run `gateway --dev` to try it out"
            )
        values["jwt_secret"] = secrets.token_urlsafe(48)
        values["jwt_secret_generated"] = True


def _key_or_config_error(setting: str, load: Callable[[], object]) -> None:
    try:
        load()
    except AlgorithmMismatch as exc:
        raise ConfigError(f"JWT_ALGORITHMS: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def _read_jwks_file(url: str, allowed: frozenset[str] | None) -> bytes:
    path = unquote(urlparse(url).path)
    try:
        document = read_jwks_file(Path(path))
    except OSError as exc:
        raise ConfigError(f"JWT_JWKS_URL: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"JWT_JWKS_URL: {path}: {exc}") from None
    try:
        result = jwks_keys(document, allowed, allow_secrets=True, min_secret_bytes=MIN_SECRET_BYTES)
    except ValueError as exc:
        raise ConfigError(f"JWT_JWKS_URL: {path}: {exc}") from None
    if not result.keys:
        why = f" ({'; '.join(result.problems)})" if result.problems else ""
        raise ConfigError(f"JWT_JWKS_URL: {path} holds no key the gateway can verify with{why}")
    return document


def refuse_weak_credentials(values: dict[str, Any]) -> None:
    """Outside --dev: no credential copied from the repository's examples, none too short."""
    hmac_secrets = [("JWT_SECRET", values["jwt_secret"])] if values["jwt_secret"] else []
    hmac_secrets += [(f"JWT_SECRETS (item {i})", s) for i, (_, s) in enumerate(values["jwt_secrets"], 1)]
    others = [("PUBLISH_API_KEY", values["publish_api_key"])] if values["publish_api_key"] else []
    others += [(f"REDIS_URL ({where})", password) for where, password in url_passwords(values["redis_url"])]
    for name, value in hmac_secrets + others:
        if value in EXAMPLE_SECRETS:
            raise ConfigError(
                f"{name}: this value is a public example from the repository (docker-compose.yml, "
                "deploy/k8s/secret.example.yaml, the docs), so anyone may know it. Generate your own "
                "(e.g. `openssl rand -hex 32`) and keep it in your secret store; `gateway --dev` accepts "
                "it for a local try")
    for name, value in hmac_secrets:
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"{name}: {len(value.encode())} bytes; use at least {MIN_SECRET_BYTES} random "
                              "bytes (e.g. `openssl rand -hex 32`): a short HMAC key can be brute-forced "
                              "from one token")
    key = values["publish_api_key"]
    if key and len(key.encode()) < MIN_PUBLISH_KEY_BYTES:
        raise ConfigError(f"PUBLISH_API_KEY: {len(key.encode())} bytes; use at least {MIN_PUBLISH_KEY_BYTES} "
                          "random bytes (e.g. `openssl rand -hex 24`)")


def url_passwords(url: str) -> list[tuple[str, str]]:
    """Every password a Redis URL carries: userinfo, `?password=`, `?sentinel_password=`."""
    if not url:
        return []
    parsed = urlparse(url)
    out = [("password", unquote(parsed.password))] if parsed.password else []
    for key, found in parse_qs(parsed.query, keep_blank_values=False).items():
        if key.endswith("password"):
            out += [(key, value) for value in found]
    return out
