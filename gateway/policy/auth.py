"""Handshake authentication: a token in, an `Identity` or a typed refusal out.

The client learns only the refusal code (`token_missing`, `token_invalid`, `token_expired`);
the reason in detail goes to the log. Accepted algorithms come from the settings and the keys,
never from the token: each key verifies its own algorithm family only (`gateway.policy.keys`),
so `alg: none` and HS/RS key confusion are refused by construction, however keys are mixed.
Time claims must be numbers and, unless JWT_REQUIRE_EXP is off, `exp` must be there: what the
handshake accepts is what the expiry timer enforces while the socket stays connected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from gateway.config import MIN_SECRET_BYTES, Settings
from gateway.policy.keys import DEFAULT_HMAC, VerificationKey, choose, jwks_keys, pem_keys, secret_key
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
_TIME_CLAIMS = ("exp", "nbf", "iat")


class BadSignature(AuthError):
    """The signature does not verify with this key; another key of the set may still verify it."""

    def __init__(self) -> None:
        super().__init__(TOKEN_INVALID, "signature does not verify")


def _b64url(segment: str) -> bytes:
    """A JWS segment, decoded as strictly as PyJWT (>= 2.13) does: the base64url alphabet, at most
    two `=` of padding and only on a whole quantum, and the canonical spelling only (a signature
    whose last character differs in unused bits is another token, refused)."""
    stripped = segment.rstrip("=")
    padding = len(segment) - len(stripped)
    if (padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1
            or not _B64URL.fullmatch(stripped)):
        raise ValueError("not base64url")
    decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped.encode():
        raise ValueError("not canonical base64url")
    return decoded


def _as_int(value: Any, name: str) -> int:
    """A time claim as PyJWT reads it (`int(value)`), so both verifiers agree."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise AuthError(TOKEN_INVALID, f"{name} is not a number") from None


def _header(head_b64: str) -> dict[str, Any]:
    """The JOSE header, with `alg` a string and `kid` absent or a string, not null (as PyJWT):
    a list or an object there is a refusal, not an exception further on."""
    try:
        header = orjson.loads(_b64url(head_b64))
    except (ValueError, orjson.JSONDecodeError):
        raise AuthError(TOKEN_INVALID, "header does not decode") from None
    if type(header) is not dict:
        raise AuthError(TOKEN_INVALID, "header is not an object")
    alg = header.get("alg")
    if type(alg) is not str:
        raise AuthError(TOKEN_INVALID, f"header alg is a {type(alg).__name__}, not a string")
    kid = header.get("kid")
    if "kid" in header and type(kid) is not str:
        raise AuthError(TOKEN_INVALID, f"header kid is a {type(kid).__name__}, not a string")
    return header


class HmacVerifier:
    """HS256/384/512 verification without PyJWT's per-call key preparation.

    PyJWT re-validates and re-encodes the HMAC key on every decode (to refuse PEM text as a
    secret); with one secret fixed at start that work is done once, here. Same rules as PyJWT
    for what it accepts (a differential property test keeps them equal): compact JWS, the
    header's `alg` a string in the allowed list and `kid` a string when present, a constant-time
    signature check before any claim is read, `exp`/`nbf` numeric with leeway, `iat` numeric,
    `aud`/`iss` when configured.
    """

    def __init__(self, secret: bytes, algorithms: Iterable[str], audience: str | None, issuer: str | None,
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
        header = _header(head_b64)
        try:
            signature = _b64url(sig_b64)
        except ValueError:
            raise AuthError(TOKEN_INVALID, "signature does not decode") from None
        alg = header["alg"]
        digest = self._digests.get(alg)
        if digest is None:
            raise AuthError(TOKEN_INVALID, f"algorithm {alg[:20]!r} is not allowed")
        if "crit" in header or header.get("b64") is False:
            raise AuthError(TOKEN_INVALID, "unsupported header parameters")
        expected = hmac.new(self._secret, f"{head_b64}.{body_b64}".encode(), digest).digest()
        if not hmac.compare_digest(expected, signature):
            raise BadSignature
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


class PyJwtVerifier:
    """A public key (RSA, EC, Ed25519), verified by PyJWT with the key's own algorithms only."""

    def __init__(self, key: VerificationKey, audience: str | None, issuer: str | None, leeway: float) -> None:
        self._material = key.material
        self._algorithms = sorted(key.algorithms)
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._options: dict[str, Any] = {
            # sub may be an integer (contract); identity_from_claims checks it.
            "verify_sub": False,
            "verify_jti": False,
            "verify_aud": audience is not None,
            "verify_iss": issuer is not None,
        }

    def claims(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self._material, algorithms=self._algorithms, audience=self._audience,
                                issuer=self._issuer, leeway=self._leeway,
                                options=self._options)  # type: ignore[arg-type]
        except jwt.InvalidSignatureError:
            raise BadSignature from None
        except jwt.ExpiredSignatureError:
            raise AuthError(TOKEN_EXPIRED, "exp is in the past") from None
        except jwt.PyJWTError as exc:
            raise AuthError(TOKEN_INVALID, f"{type(exc).__name__}: {exc}") from None
        if not isinstance(claims, dict):
            raise AuthError(TOKEN_INVALID, "claims are not an object")
        return claims


Verifier = HmacVerifier | PyJwtVerifier


@dataclass(frozen=True, slots=True)
class _Entry:
    """A key in force and the verifier built for it once."""

    kid: str | None
    algorithms: frozenset[str]
    label: str
    verifier: Verifier


class Authenticator:
    """Verifies handshake tokens against the configured keys and claims.

    One JWT_SECRET and nothing else (the common case) goes straight to its `HmacVerifier`.
    Otherwise the header's `alg` and `kid` choose the keys to try (`keys.choose`); a key whose
    signature does not match lets the next one try, any other refusal is final.
    """

    def __init__(self, settings: Settings) -> None:
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway
        self._require_exp = settings.jwt_require_exp
        allowed = frozenset(settings.jwt_algorithms) or None
        self._allowed = allowed
        self._static = tuple(self._entry(k) for k in static_keys(settings, allowed))
        self._use(())
        self.jwks_url = settings.jwt_jwks_url
        self.jwks_refresh = settings.jwt_jwks_refresh
        # Set when a token names a kid no key has: the JWKS refresher fetches early (rate-limited).
        self.refresh_wanted = asyncio.Event()
        self.jwks_loaded = False
        only = self._static[0] if len(self._static) == 1 else None
        self._hmac = (only.verifier if only is not None and only.kid is None and not self.jwks_url
                      and isinstance(only.verifier, HmacVerifier) else None)
        if settings.jwt_jwks_document:
            self.install_jwks(jwks_keys(settings.jwt_jwks_document, allowed, allow_secrets=True,
                                        min_secret_bytes=MIN_SECRET_BYTES).keys)

    @property
    def leeway(self) -> float:
        return self._leeway

    @property
    def allowed_algorithms(self) -> frozenset[str] | None:
        """JWT_ALGORITHMS as a set; None when unset (each key's own default)."""
        return self._allowed

    @property
    def key_labels(self) -> list[str]:
        """Where each key in force came from, in the order they are tried (for logs)."""
        return [e.label for e in self._entries]

    def not_ready(self) -> str | None:
        """Why no token can be verified yet: a JWKS URL is the only key source and has not been
        fetched. None once any key is in force."""
        return "jwks_not_loaded" if not self._entries else None

    def install_jwks(self, keys: Iterable[VerificationKey]) -> None:
        """Swap in the keys of a newly fetched JWKS document (the static keys stay first)."""
        self._use(tuple(self._entry(k) for k in keys))
        self.jwks_loaded = True

    def _use(self, dynamic: tuple[_Entry, ...]) -> None:
        self._entries = self._static + dynamic  # and their kids, which move with them
        self._kids = frozenset(e.kid for e in self._entries if e.kid is not None)

    def _entry(self, key: VerificationKey) -> _Entry:
        verifier: Verifier
        if key.is_secret:
            verifier = HmacVerifier(key.material, key.algorithms, self._audience, self._issuer, self._leeway)
        else:
            verifier = PyJwtVerifier(key, self._audience, self._issuer, self._leeway)
        return _Entry(key.kid, key.algorithms, key.label, verifier)

    def authenticate(self, token: str) -> Identity:
        claims = self._hmac.claims(token) if self._hmac is not None else self._claims(token)
        self._check_claim_types(claims)
        return identity_from_claims(claims)

    def _claims(self, token: str) -> dict[str, Any]:
        if token.count(".") != 2:
            raise AuthError(TOKEN_INVALID, "not a compact JWS (three dot-separated segments)")
        header = _header(token.partition(".")[0])
        alg: str = header["alg"]
        kid: str | None = header.get("kid")
        entries = choose(self._entries, alg, kid)
        unknown_kid = kid is not None and kid not in self._kids  # a set: no scan per handshake
        if unknown_kid and self.jwks_url:
            self.refresh_wanted.set()
        if not entries:
            named = f" for kid {str(kid)[:40]!r}" if kid is not None else ""
            if unknown_kid:
                raise AuthError(TOKEN_INVALID, f"no key{named} (nor one without a kid that takes {alg[:20]!r})")
            raise AuthError(TOKEN_INVALID, f"algorithm {alg[:20]!r} is not accepted by any key{named}")
        for entry in entries:
            try:
                return entry.verifier.claims(token)
            except BadSignature:
                continue
        tried = ", ".join(e.label for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise AuthError(TOKEN_INVALID, f"signature does not verify with any key tried ({tried})")

    def _check_claim_types(self, claims: Mapping[str, Any]) -> None:
        """Time claims are JSON numbers (RFC 7519's NumericDate), as jsonwebtoken (Node) insists.

        PyJWT reads `int(value)`, so `"exp": "1700000000"` passes its check, but the expiry
        timer while connected needs a number: a string is refused here, at the handshake, rather
        than a token accepted whose expiry is never enforced."""
        for name in _TIME_CLAIMS:
            if name in claims:
                value = claims[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise AuthError(TOKEN_INVALID, f"{name} is a {type(value).__name__}, not a number "
                                                   "(NumericDate)")
        if self._require_exp and "exp" not in claims:
            raise AuthError(TOKEN_INVALID, "no exp claim: a token without one would never expire "
                                           "(JWT_REQUIRE_EXP is on)")


def static_keys(settings: Settings, allowed: frozenset[str] | None) -> list[VerificationKey]:
    """The keys the settings name directly, in the order they are tried: JWT_SECRET, JWT_SECRETS,
    then the PEM blocks of JWT_PUBLIC_KEY(_FILE). `load_settings` has checked each already."""
    hmac_allowed = allowed or DEFAULT_HMAC
    keys = [secret_key("JWT_SECRET", None, settings.jwt_secret, hmac_allowed)] if settings.jwt_secret else []
    keys += [secret_key(f"JWT_SECRETS item {i}", kid, secret, hmac_allowed)
             for i, (kid, secret) in enumerate(settings.jwt_secrets, start=1)]
    if settings.jwt_public_key:
        keys += pem_keys("JWT_PUBLIC_KEY", settings.jwt_public_key, allowed)
    return keys


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
        # Authenticator refused any other type: what passed the handshake's check is enforced.
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

