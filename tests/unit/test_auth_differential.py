"""The HMAC fast path accepts and refuses exactly what PyJWT does (property test)."""

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
