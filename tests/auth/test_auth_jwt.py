"""Bearer JWT verification: the Deckhouse samples, every rejection reason, algorithms, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy.auth import REASONS, AuthenticationError, Principal, TokenVerifier, bearer_token
from apiproxy.auth.jwt import DECKHOUSE_MAX_LIFETIME, MAX_TOKEN_LENGTH
from apiproxy.auth.keys import b64url_encode, public_key_pem
from apiproxy.auth.truststore import TrustStore, build_trust_store, parse_trust_json
from tests.auth.helpers import ALPHA, BETA, FIXTURES, LOCAL, NOW, Clock, Cluster, deckhouse_entry


def fixture_token(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def seg(obj: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())

    return f"{seg(header)}.{seg(claims)}.{b64url_encode(signature)}"


def reject(verifier: TokenVerifier, token: str, reason: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token)
    err = info.value
    assert err.reason == reason, err.message
    assert err.reason in REASONS
    if len(token) > 10:
        assert token not in err.message
        for part in token.split("."):
            if len(part) > 8:
                assert part not in err.message
    return err


def valid_claims(uuid: str) -> dict[str, Any]:
    return {
        "iss": "d8-istio",
        "aud": LOCAL,
        "sub": uuid,
        "scope": "api",
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 3600,
    }


# --- the Deckhouse samples -------------------------------------------------------------------------


@pytest.fixture
def deckhouse_verifier(deckhouse_store: TrustStore, clock: Clock) -> TokenVerifier:
    # The samples live ten years (2026-2036); the lifetime cap, which refuses them by default, is tested
    # in test_token_strictness.py. Here they prove the format: keys, claims, signature.
    return TokenVerifier(deckhouse_store, LOCAL, clock=clock, max_lifetime=None)


def test_fixture_alpha_api_is_accepted_as_alpha(deckhouse_verifier: TokenVerifier) -> None:
    principal = deckhouse_verifier.verify(fixture_token("alpha-api.jwt"))
    assert principal == Principal(ALPHA, None, "jwt", ALPHA)
    assert principal.display == ALPHA


def test_fixture_alpha_api_is_accepted_by_the_real_clock(deckhouse_store: TrustStore) -> None:
    verifier = TokenVerifier(deckhouse_store, LOCAL, max_lifetime=None)
    assert verifier.verify(fixture_token("alpha-api.jwt")).cluster_uuid == ALPHA


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("alpha-expired.jwt", "expired"),
        ("alpha-private-scope.jwt", "bad_scope"),
        ("alpha-forged-by-beta.jwt", "bad_signature"),
    ],
)
def test_fixture_rejections(deckhouse_verifier: TokenVerifier, name: str, reason: str) -> None:
    reject(deckhouse_verifier, fixture_token(name), reason)


def test_friendly_name_shows_in_principal() -> None:
    store = parse_trust_json((FIXTURES / "remote-public-metadata.json").read_bytes(), names={ALPHA: "alpha"})
    verifier = TokenVerifier(store, LOCAL, clock=Clock(), max_lifetime=None)
    principal = verifier.verify(fixture_token("alpha-api.jwt"))
    assert (principal.cluster_name, principal.display) == ("alpha", "alpha")


def test_forged_token_is_not_rescued_by_other_clusters_key(deckhouse_verifier: TokenVerifier) -> None:
    # Signed by beta, claims alpha: beta's key must never be tried for an alpha token.
    err = reject(deckhouse_verifier, fixture_token("alpha-forged-by-beta.jwt"), "bad_signature")
    assert BETA not in err.message


# --- every bad input -------------------------------------------------------------------------------


@pytest.fixture
def verifier(gamma_store: TrustStore, clock: Clock) -> TokenVerifier:
    return TokenVerifier(gamma_store, LOCAL, clock=clock)


def test_valid_generated_token(verifier: TokenVerifier, gamma: Cluster) -> None:
    assert verifier.verify(gamma.token()) == Principal(gamma.uuid, "gamma", "jwt", gamma.uuid)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "missing"),
        ("garbage", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("!!!.???.***", "malformed"),
        ("eyJhbGciOiJFZERTQSJ9.not-json.c2ln", "malformed"),
        (b64url_encode(b"[1]") + ".e30.c2ln", "malformed"),
        (b64url_encode(b'{"alg":"EdDSA","alg":"none"}') + ".e30.c2ln", "malformed"),
        ("x" * (MAX_TOKEN_LENGTH + 1), "token_too_large"),
        ("é.é.é", "malformed"),
    ],
)
def test_structurally_bad_tokens(verifier: TokenVerifier, token: str, reason: str) -> None:
    reject(verifier, token, reason)


def test_wrong_signature(verifier: TokenVerifier, gamma: Cluster) -> None:
    header, claims, _ = gamma.token().split(".")
    other = Cluster(gamma.uuid, ed25519.Ed25519PrivateKey.generate()).token()
    reject(verifier, f"{header}.{claims}.{other.split('.')[2]}", "bad_signature")


def test_signature_not_base64(verifier: TokenVerifier, gamma: Cluster) -> None:
    header, claims, _ = gamma.token().split(".")
    reject(verifier, f"{header}.{claims}.not+base64/", "malformed")


def test_tampered_claims(verifier: TokenVerifier, gamma: Cluster) -> None:
    header, _, signature = gamma.token().split(".")
    claims = valid_claims(gamma.uuid) | {"scope": "api admin"}
    forged_claims = b64url_encode(json.dumps(claims).encode())
    reject(verifier, f"{header}.{forged_claims}.{signature}", "bad_signature")


def test_unknown_cluster(verifier: TokenVerifier) -> None:
    stranger = Cluster("ffffffff-0000-4000-8000-000000000000", ed25519.Ed25519PrivateKey.generate())
    err = reject(verifier, stranger.token(), "unknown_cluster")
    assert stranger.uuid in err.message  # a printable id is named, to help the operator


def test_unknown_cluster_with_unprintable_sub_is_not_echoed(verifier: TokenVerifier) -> None:
    stranger = Cluster("evil\r\nX-Injected: 1", ed25519.Ed25519PrivateKey.generate())
    err = reject(verifier, stranger.token(), "unknown_cluster")
    assert "evil" not in err.message and "\n" not in err.message


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "some-other-cluster"}, "bad_audience"),
        ({"aud": ["some-other-cluster", "and-another"]}, "bad_audience"),
        ({"aud": []}, "bad_audience"),
        ({"aud": 42}, "malformed"),
        ({"aud": None}, "missing_claim"),
        ({"iss": "someone-else"}, "bad_issuer"),
        ({"iss": None}, "missing_claim"),
        ({"scope": "private-multicluster"}, "bad_scope"),
        ({"scope": "apis"}, "bad_scope"),
        ({"scope": ["api"]}, "bad_scope"),
        ({"scope": None}, "bad_scope"),
        ({"exp": int(NOW) - 1}, "expired"),
        ({"exp": int(NOW)}, "expired"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "2036-01-01"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"exp": float("inf")}, "malformed"),
        ({"nbf": float("nan")}, "malformed"),
        ({"nbf": int(NOW) + 61}, "not_yet_valid"),
        ({"iat": int(NOW) + 600}, "not_yet_valid"),
        ({"sub": None}, "missing_claim"),
        ({"sub": 7}, "malformed"),
    ],
)
def test_claim_rejections(
    verifier: TokenVerifier, gamma: Cluster, claims: dict[str, Any], reason: str
) -> None:
    reject(verifier, gamma.token(**claims), reason)


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": [LOCAL]},
        {"aud": ["first", LOCAL]},
        {"nbf": int(NOW) + 59},  # clock skew within the leeway
        {"nbf": None},
        {"iat": int(NOW) - 10},
        {"iat": int(NOW) + 30},
        {"scope": "api other"},
        {"exp": NOW + 0.5},
        {"extra": {"nested": [1, 2]}},
    ],
)
def test_claim_variants_accepted(verifier: TokenVerifier, gamma: Cluster, claims: dict[str, Any]) -> None:
    assert verifier.verify(gamma.token(**claims)).cluster_uuid == gamma.uuid


def test_scope_and_issuer_checks_can_be_disabled(gamma_store: TrustStore, gamma: Cluster) -> None:
    relaxed = TokenVerifier(gamma_store, LOCAL, issuer=None, required_scope=None, clock=Clock())
    assert relaxed.verify(gamma.token(iss="other", scope=None)).cluster_uuid == gamma.uuid


def test_max_lifetime(gamma_store: TrustStore, gamma: Cluster, clock: Clock) -> None:
    strict = TokenVerifier(gamma_store, LOCAL, max_lifetime=DECKHOUSE_MAX_LIFETIME, clock=clock)
    start = int(NOW) - 60
    strict.verify(gamma.token(nbf=start, exp=start + int(DECKHOUSE_MAX_LIFETIME)))
    reject(strict, gamma.token(nbf=start, exp=start + int(DECKHOUSE_MAX_LIFETIME) + 3600), "too_long_lived")
    # Without nbf, iat is the start; without both, the remaining lifetime counts.
    reject(strict, gamma.token(nbf=None, iat=start, exp=start + 400 * 86400), "too_long_lived")
    reject(strict, gamma.token(nbf=None, exp=int(NOW) + 400 * 86400), "too_long_lived")
    # The Deckhouse samples live ten years: accepted only with the cap disabled.
    deckhouse = parse_trust_json((FIXTURES / "remote-public-metadata.json").read_bytes())
    capped = TokenVerifier(deckhouse, LOCAL, max_lifetime=DECKHOUSE_MAX_LIFETIME, clock=clock)
    reject(capped, fixture_token("alpha-api.jwt"), "too_long_lived")
    assert TokenVerifier(deckhouse, LOCAL, max_lifetime=None, clock=clock).verify(
        fixture_token("alpha-api.jwt")
    )


# --- algorithm attacks -----------------------------------------------------------------------------


def test_alg_none_is_refused(verifier: TokenVerifier, gamma: Cluster) -> None:
    for alg in ("none", "None", "NONE"):
        reject(verifier, unsigned({"alg": alg}, valid_claims(gamma.uuid)), "bad_algorithm")
    reject(verifier, unsigned({}, valid_claims(gamma.uuid)), "bad_algorithm")
    reject(verifier, unsigned({"alg": ["EdDSA"]}, valid_claims(gamma.uuid)), "bad_algorithm")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret_is_refused(verifier: TokenVerifier, gamma: Cluster, alg: str) -> None:
    """The classic confusion attack: HMAC keyed with the (public) verification key bytes."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in (
        public_key_pem(gamma.key.public_key(), deckhouse=True),
        public_key_pem(gamma.key.public_key()),
    ):
        token = unsigned({"alg": alg, "typ": "JWT"}, valid_claims(gamma.uuid))
        signing_input = token.rsplit(".", 1)[0].encode()
        mac = hmac.new(secret, signing_input, digest).digest()
        reject(verifier, token[: token.rindex(".") + 1] + b64url_encode(mac), "bad_algorithm")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256"])
def test_algorithm_must_match_key_type(verifier: TokenVerifier, gamma: Cluster, alg: str) -> None:
    # A real ES/RS signature by some key, presented with an Ed25519 cluster's sub.
    signer: Any
    if alg.startswith("ES"):
        signer = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
    else:
        signer = rsa.generate_private_key(65537, 2048)
    token = Cluster(gamma.uuid, signer).token(header={"alg": alg})
    err = reject(verifier, token, "bad_algorithm")
    assert "Ed25519" in err.message


def test_unsupported_algorithms(verifier: TokenVerifier, gamma: Cluster) -> None:
    for alg in ("ES512", "RS512", "Ed25519", "EdDSA "):
        reject(verifier, unsigned({"alg": alg}, valid_claims(gamma.uuid), b"x" * 64), "bad_algorithm")


def test_crit_header_is_refused(verifier: TokenVerifier, gamma: Cluster) -> None:
    reject(verifier, gamma.token(header={"alg": "EdDSA", "crit": ["b64"], "b64": False}), "malformed")


def test_header_key_references_are_ignored(verifier: TokenVerifier, gamma: Cluster) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    raw = attacker.public_key().public_bytes_raw()
    injected = {
        "alg": "EdDSA",
        "kid": "../../attacker",
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)},
        "x5c": [base64.b64encode(b"not a cert").decode()],
    }
    # Signed by the attacker's own key, advertised in the header: refused.
    reject(verifier, Cluster(gamma.uuid, attacker).token(header=injected), "bad_signature")
    # Signed by the real key: the junk header members change nothing.
    assert verifier.verify(gamma.token(header=injected)).cluster_uuid == gamma.uuid


def test_bearer_token_header_parsing() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc ") == "abc"
    for value, reason in (
        (None, "missing"),
        ("", "missing"),
        ("Bearer ", "missing"),
        ("Basic dXNlcg==", "malformed"),
    ):
        with pytest.raises(AuthenticationError) as info:
            bearer_token(value)
        assert info.value.reason == reason


# --- RSA and EC keys, PEM and JWKS -----------------------------------------------------------------


def _jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    def b64(n: int, size: int | None = None) -> str:
        return b64url_encode(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))

    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        rsa_nums = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "n": b64(rsa_nums.n), "e": b64(rsa_nums.e), **extra}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[pub.curve.name]
        nums = pub.public_numbers()
        return {"kty": "EC", "crv": crv, "kid": kid, "x": b64(nums.x, size), "y": b64(nums.y, size), **extra}
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(pub.public_bytes_raw()), **extra}


KEY_CASES = [
    ("rsa", lambda: rsa.generate_private_key(65537, 2048), ["RS256", "PS256"]),
    ("p256", lambda: ec.generate_private_key(ec.SECP256R1()), ["ES256"]),
    ("p384", lambda: ec.generate_private_key(ec.SECP384R1()), ["ES384"]),
    ("ed25519", ed25519.Ed25519PrivateKey.generate, ["EdDSA"]),
]


@pytest.mark.parametrize(("label", "make", "algs"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_standard_pem_keys(label: str, make: Any, algs: list[str]) -> None:
    cluster = Cluster(f"cluster-{label}", make())
    entry = {"clusterUUID": cluster.uuid, "authnKeyPub": public_key_pem(cluster.key.public_key()).decode()}
    store = parse_trust_json(json.dumps({cluster.uuid: entry}).encode())
    verifier = TokenVerifier(store, LOCAL, clock=Clock())
    for alg in algs:
        assert verifier.verify(cluster.token(header={"alg": alg})).cluster_uuid == cluster.uuid


@pytest.mark.parametrize(("label", "make", "algs"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_jwks_keys(label: str, make: Any, algs: list[str]) -> None:
    cluster = Cluster(f"cluster-{label}", make())
    jwks = {"keys": [_jwk(cluster.key, cluster.uuid)]}
    verifier = TokenVerifier(build_trust_store(None, json.dumps(jwks).encode()), LOCAL, clock=Clock())
    for alg in algs:
        assert verifier.verify(cluster.token(header={"alg": alg})).cluster_uuid == cluster.uuid
    wrong = "ES256" if "ES256" not in algs else "EdDSA"
    reject(verifier, unsigned({"alg": wrong}, valid_claims(cluster.uuid), b"x" * 64), "bad_algorithm")


def test_jwks_alg_member_narrows_rsa(clock: Clock) -> None:
    cluster = Cluster("rsa-ps-only", rsa.generate_private_key(65537, 2048))
    jwks = {"keys": [_jwk(cluster.key, "k1", sub=cluster.uuid, alg="PS256")]}
    verifier = TokenVerifier(build_trust_store(None, json.dumps(jwks).encode()), LOCAL, clock=clock)
    assert verifier.verify(cluster.token(header={"alg": "PS256"})).cluster_uuid == cluster.uuid
    reject(verifier, cluster.token(header={"alg": "RS256"}), "bad_algorithm")


def test_jwks_rotation_kid_selects_among_own_keys(clock: Clock) -> None:
    old = Cluster("rotating", ed25519.Ed25519PrivateKey.generate())
    new = Cluster("rotating", ed25519.Ed25519PrivateKey.generate())
    jwks = {"keys": [_jwk(old.key, "2025", sub="rotating"), _jwk(new.key, "2026", sub="rotating")]}
    verifier = TokenVerifier(build_trust_store(None, json.dumps(jwks).encode()), LOCAL, clock=clock)
    assert verifier.verify(new.token(header={"alg": "EdDSA", "kid": "2026"})).subject == "rotating"
    assert verifier.verify(old.token(header={"alg": "EdDSA", "kid": "2025"})).subject == "rotating"
    assert verifier.verify(old.token()).subject == "rotating"  # no kid: every key of the cluster is tried
    assert verifier.verify(old.token(header={"alg": "EdDSA", "kid": "unknown"})).subject == "rotating"
    reject(verifier, old.token(header={"alg": "EdDSA", "kid": "2026"}), "bad_signature")


def test_ecdsa_der_signature_is_refused(clock: Clock) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cluster = Cluster("p256", key)
    store = build_trust_store(None, json.dumps({"keys": [_jwk(key, "p256")]}).encode())
    verifier = TokenVerifier(store, LOCAL, clock=clock)
    header, claims, _ = cluster.token(header={"alg": "ES256"}).split(".")
    der = key.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    reject(verifier, f"{header}.{claims}.{b64url_encode(der)}", "bad_signature")


# --- cache -----------------------------------------------------------------------------------------


def test_second_verify_is_a_cache_hit(verifier: TokenVerifier, gamma: Cluster) -> None:
    token = gamma.token()
    first = verifier.verify(token)
    assert (verifier.cache_hits, verifier.cache_misses) == (0, 1)
    assert verifier.verify(token) is first
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 1)


def test_cache_never_serves_past_exp(verifier: TokenVerifier, gamma: Cluster, clock: Clock) -> None:
    token = gamma.token(exp=int(NOW) + 10)
    verifier.verify(token)
    clock.now = NOW + 9.999
    verifier.verify(token)
    assert verifier.cache_hits == 1
    clock.now = NOW + 10
    reject(verifier, token, "expired")
    assert verifier.cache_hits == 1 and verifier.cache_len == 0


def test_rejections_are_not_cached(verifier: TokenVerifier, gamma: Cluster) -> None:
    token = gamma.token(aud="elsewhere")
    for _ in range(3):
        reject(verifier, token, "bad_audience")
    assert (verifier.cache_hits, verifier.cache_misses, verifier.cache_len) == (0, 3, 0)


def test_cache_is_bounded_lru(gamma_store: TrustStore, gamma: Cluster, clock: Clock) -> None:
    verifier = TokenVerifier(gamma_store, LOCAL, clock=clock, cache_size=2)
    a, b, c = (gamma.token(jti=str(i)) for i in range(3))
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now most recent
    verifier.verify(c)  # evicts b
    assert verifier.cache_len == 2 and verifier.cache_evictions == 1
    hits = verifier.cache_hits
    verifier.verify(a)
    assert verifier.cache_hits == hits + 1
    verifier.verify(b)
    assert verifier.cache_misses == 4


def test_cache_keys_are_hashes_not_tokens(verifier: TokenVerifier, gamma: Cluster) -> None:
    token = gamma.token()
    verifier.verify(token)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in verifier._cache)
    assert token.encode() not in verifier._cache


def test_with_trust_drops_removed_cluster_at_once(gamma: Cluster, clock: Clock) -> None:
    other = Cluster("5b1e0c1d-aaaa-4bbb-8ccc-dddddddddddd", ed25519.Ed25519PrivateKey.generate())
    both = {
        gamma.uuid: deckhouse_entry(gamma.uuid, gamma.key),
        other.uuid: deckhouse_entry(other.uuid, other.key),
    }
    verifier = TokenVerifier(parse_trust_json(json.dumps(both).encode()), LOCAL, clock=clock)
    token, other_token = gamma.token(), other.token()
    verifier.verify(token)
    verifier.verify(other_token)
    assert verifier.verify(token).cluster_uuid == gamma.uuid  # cached

    only_other = parse_trust_json(json.dumps({other.uuid: both[other.uuid]}).encode())
    verifier = verifier.with_trust(only_other)
    assert verifier.cache_len == 0
    reject(verifier, token, "unknown_cluster")
    assert verifier.verify(other_token).cluster_uuid == other.uuid


def test_with_trust_keeps_settings(verifier: TokenVerifier, gamma_store: TrustStore) -> None:
    fresh = verifier.with_trust(gamma_store)
    for name in ("audience", "issuer", "leeway", "max_lifetime", "required_scope", "clock", "cache_size"):
        assert getattr(fresh, name) == getattr(verifier, name)


def test_rotated_key_invalidates_cached_tokens(gamma: Cluster, clock: Clock) -> None:
    store = parse_trust_json(json.dumps({gamma.uuid: deckhouse_entry(gamma.uuid, gamma.key)}).encode())
    verifier = TokenVerifier(store, LOCAL, clock=clock)
    token = gamma.token()
    verifier.verify(token)
    rotated = ed25519.Ed25519PrivateKey.generate()
    verifier = verifier.with_trust(
        parse_trust_json(json.dumps({gamma.uuid: deckhouse_entry(gamma.uuid, rotated)}).encode())
    )
    reject(verifier, token, "bad_signature")


def test_verify_is_fast_enough_when_cached(verifier: TokenVerifier, gamma: Cluster) -> None:
    # A sanity bound, not a benchmark (see benchmarks/auth_bench.py): 1000 hits well under 100 ms.
    token = gamma.token()
    verifier.verify(token)
    start = time.perf_counter()
    for _ in range(1000):
        verifier.verify(token)
    assert time.perf_counter() - start < 0.1


# --- fuzz ------------------------------------------------------------------------------------------

_JWT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=_JWT_ALPHABET, max_size=400))
def test_fuzz_only_authentication_errors(text: str) -> None:
    store = parse_trust_json((FIXTURES / "remote-public-metadata.json").read_bytes())
    verifier = TokenVerifier(store, LOCAL, clock=Clock())
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(text)
    assert info.value.reason in REASONS
    if len(text) > 12:
        assert text not in info.value.message


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "jku", "crit"]), st.one_of(st.text(), st.integers())
    ),
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "scope", "nbf", "exp", "iat"]),
        st.one_of(
            st.text(max_size=40), st.integers(), st.floats(), st.lists(st.text(max_size=5), max_size=3)
        ),
    ),
)
def test_fuzz_structured_unsigned_tokens_are_refused(header: dict[str, Any], claims: dict[str, Any]) -> None:
    store = parse_trust_json((FIXTURES / "remote-public-metadata.json").read_bytes())
    verifier = TokenVerifier(store, LOCAL, clock=Clock())
    claims.setdefault("sub", ALPHA)
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(unsigned(header, claims, b"\x00" * 64))
    assert info.value.reason in REASONS
