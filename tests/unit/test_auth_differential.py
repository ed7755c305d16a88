"""The HMAC fast path accepts and refuses exactly what PyJWT does (property test)."""

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_settings
from gateway.policy.auth import Authenticator, AuthError

SECRET = "d" * 64
NOW = int(time.time())

times = st.one_of(
    st.integers(NOW - 10_000, NOW + 10_000), st.floats(NOW - 100, NOW + 100),
    st.just("123"), st.just("soon"), st.none(), st.booleans(), st.lists(st.integers(-10, 10), max_size=1),
)
claim_sets = st.fixed_dictionaries(
    {"sub": st.one_of(st.just("1"), st.integers(1, 99))},
    optional={"exp": times, "nbf": times, "iat": times, "aud": st.sampled_from(["app", "other", ["app", "x"], 5]),
              "iss": st.sampled_from(["idp", "evil", 3])},
)


def pyjwt_outcome(token: str, audience: str | None, issuer: str | None) -> str:
    try:
        jwt.decode(token, SECRET, algorithms=["HS256"], audience=audience, issuer=issuer,
                   options={"verify_sub": False, "verify_jti": False,
                            "verify_aud": audience is not None, "verify_iss": issuer is not None})
    except jwt.ExpiredSignatureError:
        return "token_expired"
    except jwt.PyJWTError:
        return "token_invalid"
    return "ok"


def ours_outcome(auth: Authenticator, token: str) -> str:
    try:
        auth._hmac.claims(token)  # type: ignore[union-attr]
    except AuthError as exc:
        return exc.code
    return "ok"


@settings(max_examples=400, deadline=None)
@given(claims=claim_sets, key=st.sampled_from([SECRET, "e" * 64]), alg=st.sampled_from(["HS256", "HS512"]),
       audience=st.sampled_from([None, "app"]), issuer=st.sampled_from([None, "idp"]))
def test_same_verdict_as_pyjwt(claims: dict[str, Any], key: str, alg: str, audience: str | None,
                               issuer: str | None) -> None:
    env = {"JWT_SECRET": SECRET, **({"JWT_AUDIENCE": audience} if audience else {}),
           **({"JWT_ISSUER": issuer} if issuer else {})}
    auth = Authenticator(load_settings(env))
    # PyJWT's encoder refuses a non-string iss; sign the raw payload so the verifiers see it.
    token = jwt.api_jws.PyJWS().encode(orjson.dumps(claims), key, algorithm=alg)
    assert ours_outcome(auth, token) == pyjwt_outcome(token, audience, issuer)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_garbage_is_refused_like_pyjwt(text: str) -> None:
    auth = Authenticator(load_settings({"JWT_SECRET": SECRET}))
    assert ours_outcome(auth, text) == pyjwt_outcome(text, None, None) == "token_invalid"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_tampered_tokens_are_refused(position: int, byte: int) -> None:
    auth = Authenticator(load_settings({"JWT_SECRET": SECRET}))
    token = jwt.encode({"sub": "1", "exp": NOW + 3600}, SECRET, algorithm="HS256")
    i = position % len(token)
    tampered = token[:i] + chr(byte % 128) + token[i + 1:]
    if tampered != token:
        assert ours_outcome(auth, tampered) == pyjwt_outcome(tampered, None, None)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=4), inner, max_size=2)),
    max_leaves=4,
)
headers = st.fixed_dictionaries(
    {"alg": st.one_of(st.sampled_from(["HS256", "HS512", "none", "RS256"]), json_values)},
    optional={"kid": st.one_of(st.text(max_size=8), json_values), "typ": st.one_of(st.just("JWT"), json_values)},
)


@settings(max_examples=300, deadline=None)
@given(header=headers)
def test_any_header_gets_the_same_verdict_as_pyjwt(header: dict[str, Any]) -> None:
    # A list or object as `alg` or `kid` is a refusal like any other, never an exception.
    auth = Authenticator(load_settings({"JWT_SECRET": SECRET}))

    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part({'sub': '1', 'exp': NOW + 600})}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert ours_outcome(auth, token) == pyjwt_outcome(token, None, None)
