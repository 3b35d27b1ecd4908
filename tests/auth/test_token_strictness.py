"""Hostile bearer tokens: every one a 401 with a reason from the fixed set, never a crash, never accepted.

Most tokens here are *signed with the trusted key*, so the refusal they get comes from the check under
test and not from a bad signature: the order is structure → signature → claims, and each of these must
hold on its own.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy.auth import REASONS, AuthenticationError, TokenVerifier
from apiproxy.auth.jwt import DECKHOUSE_MAX_LIFETIME, DEFAULT_MAX_LIFETIME, MAX_NUMERIC_DATE
from apiproxy.auth.keys import b64url_decode, b64url_encode
from apiproxy.auth.mint import mint_token, sign
from apiproxy.auth.truststore import TrustStore, parse_trust_json
from apiproxy.proxy.authn import Authenticator
from apiproxy.proxy.settings import Settings, settings_from_args
from tests.auth.helpers import ALPHA, FIXTURES, LOCAL, NOW, Clock, Cluster, deckhouse_entry

HEADER = b'{"alg":"EdDSA"}'
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def claims_json(**overrides: Any) -> bytes:
    claims: dict[str, Any] = {
        "iss": "d8-istio",
        "aud": LOCAL,
        "sub": "0d6b6c2a-1111-4222-8333-944455556666",  # the ``gamma`` fixture's UUID
        "scope": "api",
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 3600,
    }
    claims.update(overrides)
    return json.dumps(claims, separators=(",", ":")).encode()


def signed_segments(cluster: Cluster, header: str, payload: str) -> str:
    """A token of the given segment *strings*, correctly signed: the signature covers the strings."""
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{b64url_encode(sign(cluster.key, 'EdDSA', signing_input.encode('ascii')))}"


def signed_bytes(cluster: Cluster, header: bytes, payload: bytes) -> str:
    return signed_segments(cluster, b64url_encode(header), b64url_encode(payload))


def other_spelling(segment: str) -> str | None:
    """The same bytes with the unused low bits of the last character set (``None`` if it has none)."""
    unused = {2: 4, 3: 2}.get(len(segment) % 4, 0)
    if not unused:
        return None
    last = _B64URL_ALPHABET.index(segment[-1])
    return segment[:-1] + _B64URL_ALPHABET[last | ((1 << unused) - 1)]


def refused(verifier: TokenVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token)
    err = info.value
    assert err.reason in REASONS
    for part in token.split("."):
        if len(part) > 8:
            assert part not in err.message
    return err


@pytest.fixture
def verifier(gamma_store: TrustStore, clock: Clock) -> TokenVerifier:
    return TokenVerifier(gamma_store, LOCAL, clock=clock)


def test_the_helpers_make_tokens_that_verify(verifier: TokenVerifier, gamma: Cluster) -> None:
    verifier.verify(signed_bytes(gamma, HEADER, claims_json()))


# --- numeric claims ----------------------------------------------------------------------------------

HUGE = 10**300


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (claims_json(exp=HUGE), "exp out of range"),
        (claims_json(exp=-HUGE), "exp out of range"),
        (claims_json(nbf=HUGE), "nbf out of range"),
        (claims_json(iat=HUGE), "iat out of range"),
        (claims_json(iat=-(10**400)), "iat out of range"),
        (claims_json(exp=10**30), "exp out of range"),  # "valid for 10^30 s"
        (claims_json(exp=1e300), "exp out of range"),
        (claims_json(exp=MAX_NUMERIC_DATE + 1), "exp out of range"),
        (claims_json(nbf=-1), "nbf out of range"),
        (claims_json(exp=True), "exp is not a number"),
        (claims_json(nbf=False), "nbf is not a number"),
        (claims_json(exp="2036-01-01"), "exp is not a number"),
        (claims_json(exp=[1]), "exp is not a number"),
        (claims_json(exp=None), "exp is not a number"),  # JSON null is present, not absent
        (claims_json().replace(b'"exp":1790003600', b'"exp":1e999'), "exp is not a finite number"),
        (claims_json().replace(b'"exp":1790003600', b'"exp":-1e999'), "exp is not a finite number"),
        (claims_json().replace(b'"exp":1790003600', b'"exp":NaN'), "payload is not valid JSON"),
        (claims_json().replace(b'"exp":1790003600', b'"exp":Infinity'), "payload is not valid JSON"),
    ],
)
def test_numeric_claims_out_of_range_are_401_not_500(
    verifier: TokenVerifier, gamma: Cluster, payload: bytes, words: str
) -> None:
    err = refused(verifier, signed_bytes(gamma, HEADER, payload))
    assert err.reason == "malformed"
    assert words in err.message


def test_numeric_claims_at_the_edges_of_the_range(gamma_store: TrustStore, gamma: Cluster) -> None:
    verifier = TokenVerifier(gamma_store, LOCAL, clock=Clock(MAX_NUMERIC_DATE - 100.0))
    start = MAX_NUMERIC_DATE - 3600
    verifier.verify(signed_bytes(gamma, HEADER, claims_json(nbf=start, iat=start, exp=MAX_NUMERIC_DATE)))
    verifier.verify(signed_bytes(gamma, HEADER, claims_json(nbf=0, iat=start, exp=float(MAX_NUMERIC_DATE))))


# --- canonical base64url -----------------------------------------------------------------------------


def test_a_signature_with_its_unused_bits_set_is_refused(verifier: TokenVerifier, gamma: Cluster) -> None:
    token = signed_bytes(gamma, HEADER, claims_json())
    header, payload, signature = token.split(".")
    variant = other_spelling(signature)
    assert variant is not None and variant != signature  # an Ed25519 signature has 4 unused bits
    verifier.verify(token)
    err = refused(verifier, f"{header}.{payload}.{variant}")
    assert (err.reason, err.message) == ("malformed", "token signature is not canonical unpadded base64url")
    verifier.clear_cache()
    err = refused(verifier, f"{header}.{payload}.{variant}")
    assert err.reason == "malformed"


def test_an_ed25519_signature_with_s_plus_l_is_refused(verifier: TokenVerifier, gamma: Cluster) -> None:
    """The other way to re-spell an Ed25519 signature: S + L (the group order) verifies on lax
    implementations; RFC 8032 requires S < L, and the verifier must hold to it."""
    order = 2**252 + 27742317777372353535851937790883648493
    token = signed_bytes(gamma, HEADER, claims_json())
    header, payload, signature = token.split(".")
    raw = b64url_decode(signature)
    s = int.from_bytes(raw[32:], "little") + order
    assert s < 2**256
    respelled = b64url_encode(raw[:32] + s.to_bytes(32, "little"))
    verifier.verify(token)
    assert refused(verifier, f"{header}.{payload}.{respelled}").reason == "bad_signature"


@pytest.mark.parametrize("which", ["header", "payload"])
def test_non_canonical_header_or_payload_is_refused_even_when_signed(
    verifier: TokenVerifier, gamma: Cluster, which: str
) -> None:
    # Lengths not a multiple of 3 leave unused bits in the last character.
    header_bytes, payload_bytes = b'{"alg":"EdDSA","typ":"JWT"} ', claims_json(x="y")
    header, payload = b64url_encode(header_bytes), b64url_encode(payload_bytes)
    verifier.verify(signed_segments(gamma, header, payload))
    if which == "header":
        variant = other_spelling(header)
        assert variant is not None
        token = signed_segments(gamma, variant, payload)
    else:
        variant = other_spelling(payload)
        assert variant is not None
        token = signed_segments(gamma, header, variant)
    err = refused(verifier, token)
    assert (err.reason, err.message) == ("malformed", f"token {which} is not canonical unpadded base64url")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s + "=",  # padding
        lambda s: s + "==",
        lambda s: s.replace("-", "+").replace("_", "/") + "+/",  # the other alphabet
        lambda s: s + "A" * ((1 - len(s)) % 4),  # length 1 mod 4: no byte count encodes to that
        lambda s: s[: len(s) - len(s) % 4] + "A",
        lambda s: s + " ",
        lambda s: s + "\t",
        lambda s: s[:4] + "." + s[4:],
    ],
)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_non_base64url_segments_are_malformed(
    verifier: TokenVerifier, gamma: Cluster, mangle: Any, index: int
) -> None:
    parts = signed_bytes(gamma, HEADER, claims_json()).split(".")
    parts[index] = mangle(parts[index])
    assert refused(verifier, ".".join(parts)).reason == "malformed"


# --- UTF-8 JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "payload", "words"),
    [
        (HEADER, claims_json().decode().encode("utf-16"), "payload is not UTF-8"),  # with its BOM
        (HEADER, claims_json().decode().encode("utf-16-be"), "payload is not valid JSON"),
        (HEADER, claims_json().decode().encode("utf-32"), "payload is not UTF-8"),
        (HEADER, b"\xef\xbb\xbf" + claims_json(), "payload starts with a byte order mark"),
        (HEADER, claims_json(x="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "payload is not UTF-8"),  # Latin-1
        (HEADER, claims_json(x="a").replace(b'"a"', b'"\xc0\xaf"'), "payload is not UTF-8"),  # overlong
        (HEADER, claims_json(x="a").replace(b'"a"', b'"\\ud800"'), "not valid Unicode"),
        (HEADER, claims_json(x="a").replace(b'"x"', b'"\\udfff"'), "not valid Unicode"),
        (HEADER.decode().encode("utf-16"), claims_json(), "header is not UTF-8"),
        (HEADER.decode().encode("utf-16-le"), claims_json(), "header is not valid JSON"),
        (b"\xef\xbb\xbf" + HEADER, claims_json(), "header starts with a byte order mark"),
        (b'{"alg":"EdDSA","x":"\\ud83d"}', claims_json(), "header holds a string that is not valid Unicode"),
    ],
)  # fmt: skip
def test_json_segments_must_be_utf8(
    verifier: TokenVerifier, gamma: Cluster, header: bytes, payload: bytes, words: str
) -> None:
    err = refused(verifier, signed_bytes(gamma, header, payload))
    assert err.reason == "malformed"
    assert words in err.message


def test_utf8_beyond_ascii_and_escaped_pairs_are_fine(verifier: TokenVerifier, gamma: Cluster) -> None:
    payload = claims_json(x="café ✓ 😀").replace(b'"x"', b'"\\ud83d\\ude00"')
    assert b"\\u00e9" in payload
    verifier.verify(signed_bytes(gamma, HEADER, payload.replace(b"\\u00e9", "é".encode())))
    verifier.verify(signed_bytes(gamma, HEADER, payload))


# --- lifetime ----------------------------------------------------------------------------------------

DAY = 86400


def test_default_maximum_lifetime_is_400_days_everywhere(gamma_store: TrustStore) -> None:
    assert DEFAULT_MAX_LIFETIME == 400 * DAY
    assert TokenVerifier(gamma_store, LOCAL).max_lifetime == DEFAULT_MAX_LIFETIME
    assert Settings().jwt_max_lifetime == DEFAULT_MAX_LIFETIME
    assert settings_from_args([]).jwt_max_lifetime == DEFAULT_MAX_LIFETIME
    assert settings_from_args(["--jwt-max-lifetime", "366d"]).jwt_max_lifetime == DECKHOUSE_MAX_LIFETIME

    def wired(max_lifetime: float) -> float | None:
        authn = Authenticator(
            gamma_store, audience=LOCAL, issuer="d8-istio", leeway=60, max_lifetime=max_lifetime
        )
        return authn.verifier.max_lifetime

    assert wired(Settings().jwt_max_lifetime) == DEFAULT_MAX_LIFETIME
    assert wired(settings_from_args(["--jwt-max-lifetime", "0"]).jwt_max_lifetime) is None


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"nbf": int(NOW) - 60, "exp": int(NOW) + 366 * DAY}, True),  # what Deckhouse issues at most
        ({"nbf": int(NOW) - 60, "exp": int(NOW) - 60 + 400 * DAY}, True),
        ({"nbf": int(NOW) - 60, "exp": int(NOW) + 400 * DAY + 3600}, False),
        ({"nbf": int(NOW) - 60, "exp": 10**10}, False),  # year 2286: in range, far too long
        ({"nbf": None, "exp": int(NOW) + 399 * DAY}, True),  # neither iat nor nbf: counted from now
        ({"nbf": None, "exp": int(NOW) + 401 * DAY}, False),
        ({"nbf": None, "iat": int(NOW) - 60, "exp": int(NOW) + 401 * DAY}, False),
        # The latest of iat and nbf starts the lifetime: an old nbf does not make a fresh token too long,
        # and an old iat does not either ...
        ({"nbf": 0, "iat": int(NOW) - 60, "exp": int(NOW) + 300 * DAY}, True),
        ({"nbf": int(NOW) - 60, "iat": 0, "exp": int(NOW) + 300 * DAY}, True),
        # ... but when both are old, the issuer minted a token living longer than allowed.
        ({"nbf": int(NOW) - 200 * DAY, "iat": int(NOW) - 200 * DAY, "exp": int(NOW) + 300 * DAY}, False),
    ],
)
def test_lifetime_cap(
    verifier: TokenVerifier, gamma: Cluster, claims: dict[str, Any], accepted: bool
) -> None:
    token = gamma.token(**claims)
    if accepted:
        assert verifier.verify(token).cluster_uuid == gamma.uuid
    else:
        err = refused(verifier, token)
        assert err.reason == "too_long_lived"
        assert "lifetime exceeds the allowed maximum of 34560000s" in err.message


@pytest.mark.parametrize("disabled", [None, 0, 0.0])
def test_lifetime_cap_can_be_disabled(
    gamma_store: TrustStore, gamma: Cluster, disabled: float | None
) -> None:
    verifier = TokenVerifier(gamma_store, LOCAL, clock=Clock(), max_lifetime=disabled)
    verifier.verify(gamma.token(exp=int(NOW) + 50 * 365 * DAY))
    # Disabling the cap does not disable the range: 10^30 s is no date.
    assert refused(verifier, gamma.token(exp=10**30)).reason == "malformed"


def test_deckhouse_samples_under_the_default_cap(deckhouse_store: TrustStore, clock: Clock) -> None:
    default = TokenVerifier(deckhouse_store, LOCAL, clock=clock)
    # The ten-year sample is refused by default; one minted by alpha's key as Deckhouse mints (366 d) passes.
    ten_years = (FIXTURES / "alpha-api.jwt").read_text().strip()
    assert refused(default, ten_years).reason == "too_long_lived"
    alpha_key = (FIXTURES / "alpha-priv.pem").read_bytes()
    a_year = mint_token(alpha_key, ALPHA, LOCAL, ttl=DECKHOUSE_MAX_LIFETIME, now=NOW - 60)
    assert default.verify(a_year).cluster_uuid == ALPHA
    for name, reason in [
        ("alpha-expired.jwt", "expired"),
        ("alpha-private-scope.jwt", "bad_scope"),
        ("alpha-forged-by-beta.jwt", "bad_signature"),
    ]:
        assert refused(default, (FIXTURES / name).read_text().strip()).reason == reason


# --- random mutations --------------------------------------------------------------------------------

#: Module-level (hypothesis runs one function many times; nothing here is mutated).
FUZZ = Cluster("0d6b6c2a-1111-4222-8333-944455556666", ed25519.Ed25519PrivateKey.generate())
FUZZ_STORE = parse_trust_json(json.dumps({FUZZ.uuid: deckhouse_entry(FUZZ.uuid, FUZZ.key)}).encode())
_CHARS = _B64URL_ALPHABET + "=+/. \t\r\n\x00é"


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_mutated_tokens_never_verify_and_never_crash(data: st.DataObject) -> None:
    verifier = TokenVerifier(FUZZ_STORE, LOCAL, clock=Clock())
    original = FUZZ.token(iat=int(NOW) - 30, jti="abcd")
    parts = original.split(".")
    index = data.draw(st.integers(min_value=0, max_value=2), label="segment")
    segment = parts[index]
    position = data.draw(st.integers(min_value=0, max_value=len(segment)), label="position")
    char = data.draw(st.sampled_from(_CHARS), label="char")
    mutation = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate", "unused-bits", "pad"]))
    if mutation == "replace":
        segment = segment[:position] + char + segment[position + 1 :]
    elif mutation == "insert":
        segment = segment[:position] + char + segment[position:]
    elif mutation == "delete":
        segment = segment[:position] + segment[position + 1 :]
    elif mutation == "truncate":
        segment = segment[:position]
    elif mutation == "unused-bits":
        segment = other_spelling(segment) or segment + char
    else:
        segment += "=" * (1 + position % 2)
    parts[index] = segment
    token = ".".join(parts)
    try:
        verifier.verify(token)
    except AuthenticationError as err:
        assert err.reason in REASONS
        assert segment not in err.message or len(segment) <= 8
    else:
        assert token == original  # exactly one string carries this signature


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["exp", "nbf", "iat"]),
    value=st.one_of(
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(),
        st.booleans(),
        st.text(max_size=10),
        st.none(),
    ),
)
def test_signed_numeric_claims_of_any_value_are_accepted_or_refused_never_crash(
    name: str, value: Any
) -> None:
    verifier = TokenVerifier(FUZZ_STORE, LOCAL, clock=Clock())
    token = signed_bytes(FUZZ, HEADER, claims_json(**{name: value}))
    try:
        verifier.verify(token)
    except AuthenticationError as err:
        assert err.reason in REASONS
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert 0 <= value <= MAX_NUMERIC_DATE
