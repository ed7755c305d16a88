"""Keys that rotate (issue 12, item 14): several verification keys at once, chosen by `kid` or
tried in order, each bound to its algorithm family; JWKS documents from a file or a URL."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import ConfigError, load_settings
from gateway.policy.auth import Authenticator, AuthError
from gateway.policy.keys import jwks_keys

OLD = "o" * 40
NEW = "n" * 40
THIRD = "t" * 40


def claims(sub: str = "1", **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time()) + 600, **extra}


def hs(key: str, kid: str | None = None, alg: str = "HS256", **extra: Any) -> str:
    return jwt.encode(claims(**extra), key, algorithm=alg, headers={"kid": kid} if kid else None)


def refusal(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(token)
    return info.value


def pem(private: Any) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def oct_jwk(secret: str, kid: str, **extra: Any) -> dict[str, Any]:
    return {"kty": "oct", "kid": kid, "k": b64(secret.encode()), **extra}


def public_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, **extra}


# -- HS secrets side by side -------------------------------------------------------------------


def test_old_and_new_secret_both_verify_during_a_rotation() -> None:
    auth = Authenticator(load_settings({"JWT_SECRET": OLD, "JWT_SECRETS": NEW}))
    assert auth.authenticate(hs(OLD, sub="a")).user_id == "a"
    assert auth.authenticate(hs(NEW, sub="b")).user_id == "b"
    assert refusal(auth, hs(THIRD)).code == "token_invalid"


def test_one_secret_keeps_the_fast_path_and_several_leave_it() -> None:
    assert Authenticator(load_settings({"JWT_SECRET": OLD}))._hmac is not None
    assert Authenticator(load_settings({"JWT_SECRET": OLD, "JWT_SECRETS": NEW}))._hmac is None


def test_a_kid_chooses_its_key_and_only_that_one() -> None:
    auth = Authenticator(load_settings({"JWT_SECRET": OLD, "JWT_SECRETS": f"k1:{NEW},k2:{THIRD}"}))
    assert auth.authenticate(hs(NEW, kid="k1")).user_id == "1"
    assert auth.authenticate(hs(THIRD, kid="k2")).user_id == "1"
    # signed with k2's secret but claiming k1: k1 alone is tried
    refused = refusal(auth, hs(THIRD, kid="k1"))
    assert refused.code == "token_invalid"
    assert "JWT_SECRETS item 1" in refused.detail
    # no kid: every key, in order
    assert auth.authenticate(hs(THIRD)).user_id == "1"
    # a kid nobody has: the keys without a kid (JWT_SECRET) still work for it
    assert auth.authenticate(hs(OLD, kid="issuer-stamp")).user_id == "1"
    assert refusal(auth, hs(NEW, kid="issuer-stamp")).code == "token_invalid"


def test_a_bad_signature_does_not_hide_a_final_refusal() -> None:
    # The first key's mismatch lets the second try; the second's verdict (expired) is final.
    auth = Authenticator(load_settings({"JWT_SECRET": OLD, "JWT_SECRETS": NEW}))
    token = jwt.encode({"sub": "1", "exp": int(time.time()) - 30}, NEW, algorithm="HS256")
    assert refusal(auth, token).code == "token_expired"


def test_algorithms_are_per_key() -> None:
    old, new = OLD * 2, NEW * 2  # 80 bytes: PyJWT wants 64 or more for HS512
    auth = Authenticator(load_settings({"JWT_SECRET": old, "JWT_SECRETS": new, "JWT_ALGORITHMS": "HS512"}))
    assert auth.authenticate(hs(new, alg="HS512")).user_id == "1"
    assert "not accepted by any key" in refusal(auth, hs(new, alg="HS256")).detail


# -- mixed families: no key confusion ----------------------------------------------------------


def test_a_secret_and_a_public_key_together_never_confuse() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = pem(private)
    auth = Authenticator(load_settings({"JWT_SECRET": OLD, "JWT_PUBLIC_KEY": public_pem}))
    assert auth.authenticate(hs(OLD, sub="hs")).user_id == "hs"
    assert auth.authenticate(jwt.encode(claims("rs"), private, algorithm="RS256")).user_id == "rs"
    # The classic confusion: HS256 "signed" with the public key's PEM text as the secret.
    forger = jwt.api_jws.PyJWS(algorithms=None)
    forger._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]
    body = json.dumps(claims("admin", role="admin")).encode()
    for text in (public_pem, public_pem.strip()):
        assert refusal(auth, forger.encode(body, text.encode(), algorithm="HS256")).code == "token_invalid"
    # And the reverse: an RS256 header on a token HMAC-signed with the shared secret.
    forged_rs = forger.encode(body, OLD.encode(), algorithm="HS256").split(".")
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    assert refusal(auth, ".".join([header, *forged_rs[1:]])).code == "token_invalid"


def test_a_pem_bundle_holds_the_current_and_the_next_key(tmp_path: Any) -> None:
    current = ec.generate_private_key(ec.SECP256R1())
    upcoming = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = tmp_path / "keys.pem"
    bundle.write_text(pem(current) + pem(upcoming))
    auth = Authenticator(load_settings({"JWT_PUBLIC_KEY_FILE": str(bundle)}))
    assert auth.key_labels == ["JWT_PUBLIC_KEY[1]", "JWT_PUBLIC_KEY[2]"]
    assert auth.authenticate(jwt.encode(claims("ec"), current, algorithm="ES256")).user_id == "ec"
    assert auth.authenticate(jwt.encode(claims("rsa"), upcoming, algorithm="RS256")).user_id == "rsa"
    # an EC P-256 key verifies ES256 only, whatever the header says
    assert refusal(auth, jwt.encode(claims(), upcoming, algorithm="PS256")).code == "token_invalid"


def test_each_curve_has_its_algorithm_and_ed25519_is_accepted() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    auth = Authenticator(load_settings({"JWT_PUBLIC_KEY": pem(p384)}))
    assert auth.authenticate(jwt.encode(claims(), p384, algorithm="ES384")).user_id == "1"
    ed = ed25519.Ed25519PrivateKey.generate()
    auth = Authenticator(load_settings({"JWT_PUBLIC_KEY": pem(ed)}))
    assert auth.authenticate(jwt.encode(claims(), ed, algorithm="EdDSA")).user_id == "1"


def test_a_private_key_in_place_of_a_public_one_names_the_setting() -> None:
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ConfigError, match=r"^JWT_PUBLIC_KEY: block 1 is a PRIVATE KEY") as info:
        load_settings({"JWT_PUBLIC_KEY": private})
    assert private.splitlines()[1] not in str(info.value)


# -- JWKS documents ----------------------------------------------------------------------------


def test_a_jwks_file_chooses_by_kid(tmp_path: Any) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = {"keys": [oct_jwk(NEW, "hs-2"), public_jwk(rsa_key, "rsa-1", alg="RS256"), public_jwk(ec_key, "ec-1"),
                         {"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB"}]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    auth = Authenticator(load_settings({"JWT_JWKS_URL": path.as_uri()}))
    assert auth.key_labels == ["JWKS kid=hs-2", "JWKS kid=rsa-1", "JWKS kid=ec-1"]
    assert auth.authenticate(hs(NEW, kid="hs-2")).user_id == "1"
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert auth.authenticate(rs).user_id == "1"
    assert auth.authenticate(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})).user_id == "1"
    # the RSA key of kid rsa-1 does not verify a token that claims kid ec-1
    wrong_kid = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert refusal(auth, wrong_kid).code == "token_invalid"
    unknown = refusal(auth, jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"}))
    assert "no key for kid 'rsa-9'" in unknown.detail
    assert auth.refresh_wanted.is_set(), "an unknown kid asks the refresher for a new document"


def test_jwks_documents_leave_out_what_must_not_verify() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key))
    document = json.dumps({"keys": [
        oct_jwk(NEW, "secret"),                                   # a secret, over the network
        {**private_jwk, "kid": "private"},                        # a private key
        public_jwk(rsa_key, "mismatch", alg="ES256"),             # alg of another family
        {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
        "not an object",
        public_jwk(rsa_key, "good"),
    ]})
    result = jwks_keys(document, None, allow_secrets=False, min_secret_bytes=32)
    assert [k.kid for k in result.keys] == ["good"]
    assert len(result.problems) == 5
    assert NEW not in " ".join(result.problems)
    assert b64(NEW.encode()) not in " ".join(result.problems), "a JWK's k is never quoted"
    with pytest.raises(ValueError, match="not JSON"):
        jwks_keys("{", None, allow_secrets=False, min_secret_bytes=32)
    with pytest.raises(ValueError, match='"keys" list'):
        jwks_keys('{"keys": {}}', None, allow_secrets=False, min_secret_bytes=32)


def test_no_key_source_at_all_is_a_clear_refusal() -> None:
    with pytest.raises(ConfigError, match="JWT_JWKS_URL"):
        load_settings({})


def test_until_a_jwks_url_is_fetched_nothing_verifies() -> None:
    auth = Authenticator(load_settings({"JWT_JWKS_URL": "https://idp.example/jwks.json"}))
    assert auth.not_ready() == "jwks_not_loaded"
    assert refusal(auth, hs(NEW)).code == "token_invalid"
