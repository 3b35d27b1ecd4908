"""Key loading: Deckhouse's PEM labels, standard PEM, JWKS, and the algorithms pinned per key type."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import (
    algorithms_for,
    b64url_decode,
    b64url_encode,
    load_jwk,
    load_private_key,
    load_public_key,
    load_public_key_pem,
    parse_jwks,
    public_key_pem,
)
from tests.auth.helpers import FIXTURES

DECKHOUSE_PUB = (
    "-----BEGIN ED25519 PUBLIC KEY-----\nMCowBQYDK2VwAyEAjJD1OimVEIQsYOQBxDdti0P4cq2gGskBsgioWMBqk10=\n"
    "-----END ED25519 PUBLIC KEY-----\n"
)
NOENC = s.NoEncryption()


def test_deckhouse_ed25519_labels() -> None:
    pub = load_public_key(DECKHOUSE_PUB)
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    priv = load_private_key((FIXTURES / "alpha-priv.pem").read_bytes())
    assert isinstance(priv, ed25519.Ed25519PrivateKey)
    assert priv.public_key() == pub  # alpha's private key matches alpha's authnKeyPub
    assert public_key_pem(pub, deckhouse=True).decode() == DECKHOUSE_PUB
    assert load_public_key_pem(DECKHOUSE_PUB).algorithms == frozenset({"EdDSA"})


PKCS8, TRAD = s.PrivateFormat.PKCS8, s.PrivateFormat.TraditionalOpenSSL
RSA_ALGS, ED = frozenset({"RS256", "PS256"}), frozenset({"EdDSA"})
P256, P384 = frozenset({"ES256"}), frozenset({"ES384"})
PRIVATE_CASES: list[tuple[str, Any, s.PrivateFormat, str, frozenset[str]]] = [
    ("ed25519-pkcs8", ed25519.Ed25519PrivateKey.generate, PKCS8, "PRIVATE KEY", ED),
    ("rsa-pkcs8", lambda: rsa.generate_private_key(65537, 2048), PKCS8, "PRIVATE KEY", RSA_ALGS),
    ("rsa-pkcs1", lambda: rsa.generate_private_key(65537, 3072), TRAD, "RSA PRIVATE KEY", RSA_ALGS),
    ("p256-sec1", lambda: ec.generate_private_key(ec.SECP256R1()), TRAD, "EC PRIVATE KEY", P256),
    ("p384-pkcs8", lambda: ec.generate_private_key(ec.SECP384R1()), PKCS8, "PRIVATE KEY", P384),
]


@pytest.mark.parametrize(
    ("label", "make", "fmt", "pem_label", "algs"), PRIVATE_CASES, ids=[c[0] for c in PRIVATE_CASES]
)
def test_standard_pem(
    label: str, make: Any, fmt: s.PrivateFormat, pem_label: str, algs: frozenset[str]
) -> None:
    key = make()
    pem = key.private_bytes(s.Encoding.PEM, fmt, NOENC)
    assert f"BEGIN {pem_label}-----".encode() in pem
    loaded = load_private_key(pem)
    assert frozenset(algorithms_for(loaded)) == algs
    pub_pem = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    assert load_public_key_pem(pub_pem).algorithms == algs
    assert load_public_key(pub_pem.decode()) == key.public_key()


def test_rsa_pkcs1_public_key() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    pem = key.public_bytes(s.Encoding.PEM, s.PublicFormat.PKCS1)
    assert b"BEGIN RSA PUBLIC KEY" in pem
    assert load_public_key(pem) == key


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 1024),  # noqa: S505
        ec.generate_private_key(ec.SECP521R1()),
        ec.generate_private_key(ec.SECP256K1()),
        ed448.Ed448PrivateKey.generate(),
        x25519.X25519PrivateKey.generate(),
        dsa.generate_private_key(2048),
    ],
    ids=["rsa1024", "p521", "secp256k1", "ed448", "x25519", "dsa"],
)
def test_refused_key_types(key: Any) -> None:
    pub = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFormatError):
        load_public_key(pub)
    with pytest.raises(KeyFormatError):
        load_private_key(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, NOENC))


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        DECKHOUSE_PUB + DECKHOUSE_PUB,
        "-----BEGIN ED25519 PUBLIC KEY-----\n"
        + DECKHOUSE_PUB.splitlines()[1][:-4]
        + "\n-----END ED25519 PUBLIC KEY-----",
    ],
)
def test_bad_public_pem(pem: str) -> None:
    with pytest.raises(KeyFormatError):
        load_public_key(pem)


def test_ed25519_label_must_hold_ed25519() -> None:
    rsa_pub = rsa.generate_private_key(65537, 2048).public_key()
    pem = rsa_pub.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo).replace(
        b" PUBLIC", b" ED25519 PUBLIC"
    )
    with pytest.raises(KeyFormatError, match="holds a"):
        load_public_key(pem)


def test_encrypted_private_key_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pw"))
    with pytest.raises(KeyFormatError):
        load_private_key(pem)


def test_public_pem_is_not_a_private_key() -> None:
    with pytest.raises(KeyFormatError):
        load_private_key(DECKHOUSE_PUB)


def test_b64url_is_strict() -> None:
    assert b64url_decode(b64url_encode(b"\xff\xfe\xfd")) == b"\xff\xfe\xfd"
    for bad in ("AAA=", "AA+A", "AA/A", "A", "AA AA", "AA\nAA"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


# --- JWK ---------------------------------------------------------------------------------------------


def _ec_jwk(curve: ec.EllipticCurve, crv: str) -> dict[str, Any]:
    nums = ec.generate_private_key(curve).public_key().public_numbers()
    size = (curve.key_size + 7) // 8
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(nums.x.to_bytes(size, "big")),
        "y": b64url_encode(nums.y.to_bytes(size, "big")),
    }


def test_jwks_document() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    rsa_nums = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    doc = {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": b64url_encode(ed.public_bytes_raw())},
            {
                "kty": "RSA",
                "kid": "b",
                "use": "sig",
                "n": b64url_encode(rsa_nums.n.to_bytes(256, "big")),
                "e": "AQAB",
            },
            {**_ec_jwk(ec.SECP256R1(), "P-256"), "kid": "c"},
            {**_ec_jwk(ec.SECP384R1(), "P-384"), "kid": "d", "alg": "ES384"},
        ]
    }
    keys = [k for _, k in parse_jwks(json.dumps(doc))]
    assert [k.kid for k in keys] == ["a", "b", "c", "d"]
    assert [sorted(k.algorithms) for k in keys] == [["EdDSA"], ["PS256", "RS256"], ["ES256"], ["ES384"]]
    assert [k.kind for k in keys] == ["Ed25519", "RSA-2048", "EC-secp256r1", "EC-secp384r1"]


@pytest.mark.parametrize(
    ("jwk", "match"),
    [
        ({"kty": "oct", "k": "c2VjcmV0"}, "private or symmetric"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "d": "AAAA"}, "private"),
        ({"kty": "OKP", "crv": "X25519", "x": "AAAA"}, "Ed25519 only"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "not a valid public key"),
        ({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, "not supported"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "y": b64url_encode(b"\x01" * 32)}, "not a valid public key"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "x": "AAAA"}, "wrong length"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "alg": "ES384"}, "does not fit"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "alg": "HS256"}, "does not fit"),
        ({**_ec_jwk(ec.SECP256R1(), "P-256"), "use": "enc"}, "not 'sig'"),
        ({"kty": "RSA", "n": b64url_encode((2**1023 + 1).to_bytes(128, "big")), "e": "AQAB"}, "too small"),
        ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "base64url"),
        ({"kty": "RSA", "e": "AQAB"}, "missing"),
        ({"crv": "P-256"}, "kty"),
    ],
)
def test_bad_jwk(jwk: dict[str, Any], match: str) -> None:
    with pytest.raises(KeyFormatError, match=match):
        load_jwk(jwk)


@pytest.mark.parametrize("doc", ["[]", "{}", '{"keys": {}}', "not json", '{"keys": [42]}'])
def test_bad_jwks_document(doc: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_jwks(doc)
