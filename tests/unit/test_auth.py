"""Every refusal path of the handshake, and every key type."""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import load_settings
from gateway.policy.auth import Authenticator, AuthError, extract_token

SECRET = "k" * 48


def hs(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    """An HS token; `exp` ten minutes ahead unless the claims say (None: no exp at all)."""
    payload = {"exp": int(time.time()) + 600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg)


def auth(**env: str) -> Authenticator:
    asymmetric = any(k.startswith("JWT_PUBLIC_KEY") for k in env)
    return Authenticator(load_settings(env if asymmetric else {"JWT_SECRET": SECRET, **env}))


def code_of(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        authenticator.authenticate(token)
    return info.value.code


@pytest.mark.parametrize(
    ("auth_payload", "header", "expected"),
    [
        ({"token": "Bearer abc"}, None, "abc"),
        ({"token": "abc"}, None, "abc"),
        ({"token": "  bearer   abc "}, None, "abc"),
        (None, "Bearer xyz", "xyz"),
        ({}, "xyz", "xyz"),
        ({"token": "a"}, "Bearer b", "a"),
    ],
)
def test_token_sources(auth_payload: Any, header: str | None, expected: str) -> None:
    assert extract_token(auth_payload, header) == expected


@pytest.mark.parametrize(("auth_payload", "code"), [
    (None, "token_missing"), ({}, "token_missing"), ({"token": ""}, "token_missing"),
    ({"token": "Bearer "}, "token_missing"), ({"token": 42}, "token_invalid"), ({"token": {"a": 1}}, "token_invalid"),
])
def test_token_extraction_refusals(auth_payload: Any, code: str) -> None:
    with pytest.raises(AuthError) as info:
        extract_token(auth_payload, None)
    assert info.value.code == code


def test_identity_from_a_good_token() -> None:
    ident = auth().authenticate(hs({"sub": "42", "role": "teacher", "classrooms": ["7", 8], "exp": time.time() + 60}))
    assert ident.user_id == "42"
    assert ident.role == "teacher"
    assert ident.classrooms == ("7", "8")


def test_integer_sub_and_userid_fallback() -> None:
    assert auth().authenticate(hs({"sub": 42})).user_id == "42"
    assert auth().authenticate(hs({"userId": "u-1"})).user_id == "u-1"


@pytest.mark.parametrize("claims", [
    {}, {"sub": ""}, {"sub": {"id": 1}}, {"sub": [1]}, {"sub": 1.5}, {"sub": True},
    {"sub": "a\nb"}, {"sub": "1", "classrooms": "7"}, {"sub": "1", "classrooms": [{"x": 1}]},
])
def test_bad_claims_are_token_invalid(claims: dict[str, Any]) -> None:
    assert code_of(auth(), hs(claims)) == "token_invalid"


def test_unknown_role_is_student() -> None:
    assert auth().authenticate(hs({"sub": "1", "role": "root"})).role == "student"


def test_expired_and_leeway() -> None:
    token = hs({"sub": "1", "exp": int(time.time()) - 5})
    assert code_of(auth(), token) == "token_expired"
    assert auth(JWT_LEEWAY="30").authenticate(token).user_id == "1"


def test_wrong_signature_garbage_and_alg_none() -> None:
    a = auth()
    assert code_of(a, hs({"sub": "1"}, key="x" * 48)) == "token_invalid"
    assert code_of(a, "not.a.jwt") == "token_invalid"
    unsigned = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert code_of(a, unsigned) == "token_invalid"


def test_expired_forgery_is_invalid_not_expired() -> None:
    # The signature is checked before exp: a forger learns nothing from the code.
    assert code_of(auth(), hs({"sub": "1", "exp": 1}, key="x" * 48)) == "token_invalid"


def test_audience_and_issuer() -> None:
    a = auth(JWT_AUDIENCE="app", JWT_ISSUER="idp")
    assert a.authenticate(hs({"sub": "1", "aud": "app", "iss": "idp"})).user_id == "1"
    assert code_of(a, hs({"sub": "1", "aud": "other", "iss": "idp"})) == "token_invalid"
    assert code_of(a, hs({"sub": "1", "aud": "app", "iss": "evil"})) == "token_invalid"
    assert code_of(a, hs({"sub": "1"})) == "token_invalid"


def _pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize(("make", "alg"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
])
def test_public_keys(make: Any, alg: str, tmp_path: Any) -> None:
    private = make()
    pem = _pem(private)
    token = jwt.encode({"sub": "9", "exp": int(time.time()) + 60}, private, algorithm=alg)
    assert auth(JWT_PUBLIC_KEY=pem).authenticate(token).user_id == "9"
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem)
    assert auth(JWT_PUBLIC_KEY_FILE=str(key_file)).authenticate(token).user_id == "9"


def test_hs_rs_key_confusion_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(private)
    # An attacker signs HS256 with the public key's PEM text as the HMAC secret.
    forged = jwt.api_jws.PyJWS(algorithms=None)
    forged._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    token = forged.encode(b'{"sub":"admin","exp":%d}' % (int(time.time()) + 60), pem.encode(), algorithm="HS256")
    assert code_of(auth(JWT_PUBLIC_KEY=pem), token) == "token_invalid"


# -- token edge cases (issue 12, item 7) -------------------------------------------------------


def _raw_hs(header: dict[str, Any], claims: dict[str, Any], key: str = SECRET) -> str:
    """An HS256-signed token with exactly this header (PyJWT's encoder rewrites `alg`)."""
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signing_input = f"{part(header)}.{part(claims)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


GOOD_CLAIMS = {"sub": "1", "exp": int(time.time()) + 600}


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": True}, 256, None, True])
@pytest.mark.parametrize("env", [{}, {"JWT_SECRETS": "next:" + "n" * 40}], ids=["one-secret", "key-set"])
def test_an_alg_that_is_not_a_string_is_token_invalid(alg: Any, env: dict[str, str]) -> None:
    # A list or object as `alg` used to raise TypeError (unhashable) before the signature check,
    # closing the transport instead of answering CONNECT_ERROR token_invalid.
    assert code_of(auth(**env), _raw_hs({"alg": alg, "typ": "JWT"}, GOOD_CLAIMS)) == "token_invalid"


@pytest.mark.parametrize("kid", [["a"], {"a": 1}, 7])
def test_a_kid_that_is_not_a_string_is_token_invalid(kid: Any) -> None:
    assert code_of(auth(), _raw_hs({"alg": "HS256", "kid": kid}, GOOD_CLAIMS)) == "token_invalid"


def test_a_string_kid_is_ignored_with_one_unlabelled_secret() -> None:
    assert auth().authenticate(_raw_hs({"alg": "HS256", "kid": "any"}, GOOD_CLAIMS)).user_id == "1"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", [1], {"t": 1}])
def test_time_claims_that_are_not_numbers_are_token_invalid(claim: str, value: Any) -> None:
    assert code_of(auth(), hs({"sub": "1", claim: value})) == "token_invalid"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_boolean_time_claim_is_refused(claim: str) -> None:
    # PyJWT reads `true` as 1 (1970: an exp long past); either way the token never gets in.
    assert code_of(auth(), hs({"sub": "1", claim: True})) in {"token_invalid", "token_expired"}


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_numeric_string_time_claim_is_refused_though_pyjwt_accepts_it(claim: str) -> None:
    # PyJWT reads int("…"): the handshake passed, but the expiry timer while connected only
    # knows numbers, so the token would never have expired. Refused at the handshake now.
    now = int(time.time())
    value = {"exp": now + 600, "nbf": now - 10, "iat": now - 10}[claim]
    token = hs({"sub": "1", claim: str(value)})
    jwt.decode(token, SECRET, algorithms=["HS256"])  # PyJWT: fine
    assert code_of(auth(), token) == "token_invalid"


def test_a_numeric_exp_is_what_the_connection_expires_at() -> None:
    exp = time.time() + 600.5
    assert auth().authenticate(hs({"sub": "1", "exp": exp})).exp == exp


def test_a_token_without_exp_is_refused_by_default() -> None:
    token = hs({"sub": "1", "exp": None})
    with pytest.raises(AuthError) as info:
        auth().authenticate(token)
    assert info.value.code == "token_invalid"
    assert "JWT_REQUIRE_EXP" in info.value.detail
    identity = auth(JWT_REQUIRE_EXP="false").authenticate(token)
    assert (identity.user_id, identity.exp) == ("1", None)


def test_a_public_key_token_without_exp_is_refused_too() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"sub": "9"}, private, algorithm="ES256")
    assert code_of(auth(JWT_PUBLIC_KEY=_pem(private)), token) == "token_invalid"
