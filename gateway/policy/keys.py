"""Verification keys: where they come from, which algorithms each may verify, which to try.

Several keys may be live at once so that a key can rotate without dropping anyone: the old and
the new key verify side by side until every token signed with the old one has expired. Each key
is bound to its algorithm family when it is loaded: an HMAC secret verifies HS* tokens only, an
RSA key RS*/PS*, an EC key the ES* of its curve, an Ed25519 key EdDSA. A token's header chooses
among the keys, never the other way round, so HS/RS key confusion (an HS256 token "signed" with
the text of a public key) cannot happen however the keys are mixed.

A token whose header names a `kid` is checked with the keys of that kid only (or, when no key
has it, with the keys that have no kid: a single `JWT_SECRET` keeps working for an issuer that
stamps kids); a token without a `kid` tries every key of its algorithm, in order.

Nothing here does I/O: the settings read files, `gateway.http.jwks` fetches documents.
Messages never quote key material: a JWK's `k` is a secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

# A JWKS document bigger than this is refused, from a file or over HTTP: a real one holds a few
# keys (a few KiB), and the start check and the refresher both read it into memory.
MAX_JWKS_BYTES = 1 << 20


def read_jwks_file(path: Path) -> bytes:
    """The document at `path`, read at most MAX_JWKS_BYTES + 1 bytes far.

    Raises OSError when it cannot be read and ValueError when it is too big, so the start check
    and the refresher refuse the same files for the same reason.
    """
    with path.open("rb") as f:
        document = f.read(MAX_JWKS_BYTES + 1)
    if len(document) > MAX_JWKS_BYTES:
        raise ValueError(f"the document is over {MAX_JWKS_BYTES} bytes")
    return document

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS = frozenset({"EdDSA"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
ALL_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
# Default algorithms of a key whose source does not say (JWT_ALGORITHMS unset, a JWK without `alg`).
DEFAULT_HMAC = frozenset({"HS256"})
DEFAULT_RSA = frozenset({"RS256"})
_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# A kid in JWT_SECRETS: what a JWKS `kid` usually looks like, without `,` and `:` (the separators).
KID = re.compile(r"[A-Za-z0-9._~+/=@-]{1,128}")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)


class AlgorithmMismatch(ValueError):
    """A key that JWT_ALGORITHMS leaves no algorithm to (the fix is in JWT_ALGORITHMS)."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key: its material, the algorithms it may verify, its kid, and where it came from
    (`label`, for logs: `JWT_SECRET`, `JWT_SECRETS[2]`, `JWT_PUBLIC_KEY[1]`, `JWKS kid=abc`)."""

    label: str
    kid: str | None
    algorithms: frozenset[str]
    material: Any  # bytes for an HMAC secret, a cryptography public key otherwise

    @property
    def is_secret(self) -> bool:
        return self.algorithms <= HMAC_ALGORITHMS


def parse_secret_list(raw: str) -> tuple[tuple[str | None, str], ...]:
    """`JWT_SECRETS`: comma-separated `secret` or `kid:secret` items -> ((kid, secret), ...).

    Secrets are hex or base64 in practice (`openssl rand -hex 32`), so neither `,` nor `:` occurs
    in them; a kid follows the KID grammar. Raises ValueError naming the item by position."""
    out: list[tuple[str | None, str]] = []
    for index, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        kid: str | None = None
        secret = item
        if ":" in item:
            kid, _, secret = item.partition(":")
            kid, secret = kid.strip(), secret.strip()
            if not KID.fullmatch(kid):
                raise ValueError(f"item {index}: the kid before ':' must be 1-128 characters of "
                                 "letters, digits and ._~+/=@- (write kid:secret)")
            if not secret:
                raise ValueError(f"item {index} (kid {kid!r}): no secret after ':'")
        out.append((kid, secret))
    kids = [kid for kid, _ in out if kid is not None]
    if len(kids) != len(set(kids)):
        raise ValueError("two items have the same kid")
    return tuple(out)


def secret_key(label: str, kid: str | None, secret: str, allowed: frozenset[str]) -> VerificationKey:
    algorithms = allowed & HMAC_ALGORITHMS
    if not algorithms:
        raise AlgorithmMismatch(f"lists no HS algorithm, but {label} is an HMAC secret (HS256/384/512); "
                                "for RS/ES tokens set JWT_PUBLIC_KEY or JWT_JWKS_URL")
    return VerificationKey(label, kid, algorithms, secret.encode())


def public_key_family(key: Any) -> frozenset[str]:
    """The algorithms a loaded public key can verify (empty: a kind the gateway does not take)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVES.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKP_ALGORITHMS
    return frozenset()


def pem_keys(label: str, text: str, allowed: frozenset[str] | None) -> list[VerificationKey]:
    """Every PEM block of `text` as a key (a bundle: the current and the next key, say).

    `allowed`: JWT_ALGORITHMS when set; None: each key's family default. Raises ValueError
    naming the block by position."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from cryptography.x509 import load_pem_x509_certificate

    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise ValueError("not a PEM public key (expected a -----BEGIN PUBLIC KEY----- block)")
    keys = []
    for index, block in enumerate(blocks, start=1):
        name = f"{label}[{index}]" if len(blocks) > 1 else label
        kind = block.group(1)
        if "PRIVATE" in kind:
            raise ValueError(f"block {index} is a {kind}; give the public key (openssl pkey -pubout)")
        try:
            if kind == "CERTIFICATE":
                key: Any = load_pem_x509_certificate(block.group(0).encode()).public_key()
            else:
                key = load_pem_public_key(block.group(0).encode())
        except ValueError:
            raise ValueError(f"block {index} ({kind}) does not load as a public key") from None
        family = public_key_family(key)
        if not family:
            raise ValueError(f"block {index}: a {type(key).__name__} is not a key type the gateway "
                             "verifies with (RSA, EC P-256/384/521, Ed25519/Ed448)")
        default = DEFAULT_RSA if family == RSA_ALGORITHMS else family
        algorithms = default if allowed is None else family & allowed
        if not algorithms:
            raise AlgorithmMismatch(f"lists none of {', '.join(sorted(family))}, which is all that {name} "
                                    "can verify")
        keys.append(VerificationKey(name, None, algorithms, key))
    return keys


@dataclass(frozen=True, slots=True)
class JwksResult:
    """The usable keys of a JWKS document, and why the others were left out."""

    keys: tuple[VerificationKey, ...]
    problems: tuple[str, ...]


def jwks_keys(document: bytes | str, allowed: frozenset[str] | None, *, allow_secrets: bool,
              min_secret_bytes: int, label: str = "JWKS") -> JwksResult:
    """Parse a JWKS document (RFC 7517: `{"keys": [...]}`).

    Keys meant for encryption (`use: enc`), private keys, unknown kinds and (unless
    `allow_secrets`: a document read from a file, never one fetched over the network) `oct`
    secrets are left out with a reason. Raises ValueError when the document itself is bad."""
    try:
        data = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise ValueError("the JWKS document is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('the JWKS document is not an object with a "keys" list')
    keys: list[VerificationKey] = []
    problems: list[str] = []
    for index, jwk in enumerate(data["keys"], start=1):
        try:
            keys.append(_jwk(jwk, allowed, allow_secrets=allow_secrets, min_secret_bytes=min_secret_bytes,
                             label=label))
        except _Skip as skip:
            problems.append(f"key {index}{skip.where}: {skip}")
    return JwksResult(tuple(keys), tuple(problems))


class _Skip(ValueError):
    def __init__(self, why: str, kid: Any = None) -> None:
        super().__init__(why)
        self.where = f" (kid {kid!r})" if isinstance(kid, str) else ""


def _jwk(jwk: Any, allowed: frozenset[str] | None, *, allow_secrets: bool, min_secret_bytes: int,
         label: str) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise _Skip("not an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _Skip("kid is not a string")
    if jwk.get("use") not in (None, "sig"):
        raise _Skip(f"use is {str(jwk.get('use'))[:10]!r}, not sig", kid)
    kty = jwk.get("kty")
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALL_ALGORITHMS):
        raise _Skip(f"alg {str(alg)[:16]!r} is not one the gateway verifies", kid)
    name = f"{label} kid={kid}" if kid is not None else label
    if kty == "oct":
        if not allow_secrets:
            raise _Skip("an HMAC secret (kty oct) in a document fetched over the network is refused: "
                        "anyone who can fetch it could sign tokens", kid)
        secret = _b64url(jwk.get("k"))
        if secret is None:
            raise _Skip("k is not base64url", kid)
        if len(secret) < min_secret_bytes:
            raise _Skip(f"the secret is {len(secret)} bytes; use at least {min_secret_bytes}", kid)
        family = HMAC_ALGORITHMS
        material: Any = secret
    elif kty in {"RSA", "EC", "OKP"}:
        if "d" in jwk or "p" in jwk:
            raise _Skip("holds a private key; publish the public part only", kid)
        material = _public_jwk(jwk, kid)
        family = public_key_family(material)
        if not family:
            raise _Skip(f"a {kty} key of a curve the gateway does not verify with", kid)
    else:
        raise _Skip(f"kty {str(kty)[:10]!r} is not RSA, EC, OKP or oct", kid)
    if alg is not None:
        if alg not in family:
            raise _Skip(f"alg {alg} does not match a {kty} key", kid)
        algorithms = frozenset({alg})
    elif kty == "oct":
        algorithms = DEFAULT_HMAC if allowed is None else family
    elif kty == "RSA":
        algorithms = DEFAULT_RSA if allowed is None else family
    else:
        algorithms = family
    if allowed is not None:
        algorithms &= allowed
    if not algorithms:
        raise _Skip("its algorithm is not in JWT_ALGORITHMS", kid)
    return VerificationKey(name, kid, algorithms, material)


def _public_jwk(jwk: dict[str, Any], kid: Any) -> Any:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
    from jwt.exceptions import PyJWTError

    # PyJWT's messages may quote the JWK; only our own words go to logs.
    kty = jwk["kty"]
    try:
        if kty == "RSA":
            return RSAAlgorithm.from_jwk(jwk)
        if kty == "EC":
            if jwk.get("crv") not in _JWK_CURVES:
                raise _Skip(f"crv {str(jwk.get('crv'))[:12]!r} is not P-256, P-384 or P-521", kid)
            return ECAlgorithm.from_jwk(jwk)
        return OKPAlgorithm.from_jwk(jwk)
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, _Skip):
            raise
        raise _Skip(f"a {kty} key that does not load", kid) from None


def _b64url(value: Any) -> bytes | None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


class Selectable(Protocol):
    @property
    def kid(self) -> str | None: ...

    @property
    def algorithms(self) -> frozenset[str]: ...


S = TypeVar("S", bound=Selectable)


def choose(keys: Sequence[S], alg: str, kid: str | None) -> list[S]:
    """The keys to try for a token of this header, in order: those that verify `alg`, narrowed to
    the token's `kid` when some key has it, else to the keys without a kid."""
    usable = [k for k in keys if alg in k.algorithms]
    if kid is None:
        return usable
    named = [k for k in usable if k.kid == kid]
    return named or [k for k in usable if k.kid is None]
