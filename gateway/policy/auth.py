"""Handshake authentication: a token in, an `Identity` or a typed refusal out.

The client learns only the refusal code (`token_missing`, `token_invalid`, `token_expired`);
the reason in detail goes to the log. Accepted algorithms come from the settings, never from
the token, and a key is either an HMAC secret or a public key, never both, so `alg: none` and
HS/RS key confusion are refused by construction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

import jwt
import orjson

from gateway.config import Settings
from gateway.policy.rooms import ROLES, Identity
from publisher.rooms import InvalidRoom, classroom_room, normalize_user_id

TOKEN_MISSING = "token_missing"
TOKEN_INVALID = "token_invalid"
TOKEN_EXPIRED = "token_expired"
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class AuthError(Exception):
    """A refused handshake. `code` is for the client, `detail` for the log."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def extract_token(auth: Any, authorization_header: str | None) -> str:
    """The raw JWT from the Socket.IO `auth` payload, else from an `Authorization` header.

    `auth.token` wins when present; the `Bearer ` prefix is optional in both places.
    """
    raw: Any = None
    if isinstance(auth, Mapping) and auth.get("token") is not None:
        raw = auth["token"]
    elif authorization_header:
        raw = authorization_header
    if raw is None:
        raise AuthError(TOKEN_MISSING, "no auth.token and no Authorization header")
    if not isinstance(raw, str):
        raise AuthError(TOKEN_INVALID, f"auth.token is a {type(raw).__name__}, not a string")
    token = raw.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    elif token.lower() == "bearer":
        token = ""
    if not token:
        raise AuthError(TOKEN_MISSING, "empty token")
    return token


_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64url(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _as_int(value: Any, name: str) -> int:
    """A time claim as PyJWT reads it (`int(value)`), so both verifiers agree."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise AuthError(TOKEN_INVALID, f"{name} is not a number") from None


class HmacVerifier:
    """HS256/384/512 verification without PyJWT's per-call key preparation.

    PyJWT re-validates and re-encodes the HMAC key on every decode (to refuse PEM text as a
    secret); with one secret fixed at start that work is done once, here. Same rules as PyJWT
    for what it accepts (a differential property test keeps them equal): compact JWS, the
    header's `alg` in the allowed list, a constant-time signature check before any claim is
    read, `exp`/`nbf` numeric with leeway, `iat` numeric, `aud`/`iss` when configured.
    """

    def __init__(self, secret: bytes, algorithms: list[str], audience: str | None, issuer: str | None,
                 leeway: float) -> None:
        self._secret = secret
        self._digests = {a: _HMAC_DIGESTS[a] for a in algorithms}
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway

    def claims(self, token: str) -> dict[str, Any]:
        if token.count(".") != 2:
            raise AuthError(TOKEN_INVALID, "not a compact JWS (three dot-separated segments)")
        head_b64, body_b64, sig_b64 = token.split(".")
        try:
            header = orjson.loads(_b64url(head_b64))
            signature = _b64url(sig_b64)
        except (ValueError, orjson.JSONDecodeError):
            raise AuthError(TOKEN_INVALID, "header or signature does not decode") from None
        if type(header) is not dict:
            raise AuthError(TOKEN_INVALID, "header is not an object")
        digest = self._digests.get(header.get("alg"))  # type: ignore[arg-type]
        if digest is None:
            raise AuthError(TOKEN_INVALID, f"algorithm {str(header.get('alg'))[:20]!r} is not allowed")
        if "crit" in header or header.get("b64") is False:
            raise AuthError(TOKEN_INVALID, "unsupported header parameters")
        expected = hmac.new(self._secret, f"{head_b64}.{body_b64}".encode(), digest).digest()
        if not hmac.compare_digest(expected, signature):
            raise AuthError(TOKEN_INVALID, "signature does not verify")
        try:
            claims = orjson.loads(_b64url(body_b64))
        except (ValueError, orjson.JSONDecodeError):
            raise AuthError(TOKEN_INVALID, "payload does not decode") from None
        if type(claims) is not dict:
            raise AuthError(TOKEN_INVALID, "claims are not an object")
        self._check_times(claims)
        self._check_audience_issuer(claims)
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = time.time()
        leeway = self._leeway
        if "iat" in claims and _as_int(claims["iat"], "iat") > now + leeway:
            raise AuthError(TOKEN_INVALID, "iat is in the future")
        if "nbf" in claims and _as_int(claims["nbf"], "nbf") > now + leeway:
            raise AuthError(TOKEN_INVALID, "nbf is in the future")
        if "exp" in claims and _as_int(claims["exp"], "exp") <= now - leeway:
            raise AuthError(TOKEN_EXPIRED, "exp is in the past")

    def _check_audience_issuer(self, claims: dict[str, Any]) -> None:
        if self._audience is not None:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or self._audience not in audiences:
                raise AuthError(TOKEN_INVALID, "aud does not name this service")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise AuthError(TOKEN_INVALID, "iss is not the expected issuer")


class Authenticator:
    """Verifies handshake tokens against the configured key and claims."""

    def __init__(self, settings: Settings) -> None:
        self._key: Any = settings.jwt_key
        if settings.jwt_public_key:
            # Load the PEM once; PyJWT would otherwise parse it on every handshake.
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self._key = load_pem_public_key(settings.jwt_public_key.encode())
            except ValueError as exc:
                raise ValueError(f"JWT_PUBLIC_KEY: cannot load the PEM key: {exc}") from None
        else:
            self._key = settings.jwt_secret.encode()
        self._algorithms = list(settings.jwt_algorithms)
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway
        self._hmac = (
            HmacVerifier(self._key, self._algorithms, self._audience, self._issuer, self._leeway)
            if not settings.jwt_public_key else None
        )
        self._options: dict[str, Any] = {
            # sub may be an integer (contract); we check it ourselves below.
            "verify_sub": False,
            "verify_jti": False,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
        }

    @property
    def leeway(self) -> float:
        return self._leeway

    def authenticate(self, token: str) -> Identity:
        if self._hmac is not None:
            return identity_from_claims(self._hmac.claims(token))
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(TOKEN_EXPIRED, "exp is in the past") from None
        except jwt.PyJWTError as exc:
            raise AuthError(TOKEN_INVALID, f"{type(exc).__name__}: {exc}") from None
        if not isinstance(claims, dict):
            raise AuthError(TOKEN_INVALID, "claims are not an object")
        return identity_from_claims(claims)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    raw_user = claims.get("sub")
    if raw_user is None:
        raw_user = claims.get("userId")
    if raw_user is None:
        raise AuthError(TOKEN_INVALID, "no sub or userId claim")
    try:
        user_id = normalize_user_id(raw_user)
        # The user id becomes a room name: it must fit the room grammar.
        classroom_room(user_id)
    except (ValueError, InvalidRoom) as exc:
        raise AuthError(TOKEN_INVALID, f"bad user id: {exc}") from None
    role = claims.get("role")
    if role not in ROLES:
        role = "student"
    classrooms = _classrooms(claims.get("classrooms"))
    exp = claims.get("exp")
    return Identity(
        user_id=user_id,
        role=role,
        classrooms=classrooms,
        exp=float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None,
    )


def _classrooms(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise AuthError(TOKEN_INVALID, f"classrooms is a {type(raw).__name__}, not a list")
    out: list[str] = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise AuthError(TOKEN_INVALID, f"classroom id {item!r} is not a string or integer")
        cid = str(item)
        try:
            classroom_room(cid)
        except (ValueError, InvalidRoom) as exc:
            raise AuthError(TOKEN_INVALID, f"bad classroom id: {exc}") from None
        if cid not in out:
            out.append(cid)
    return tuple(out)

