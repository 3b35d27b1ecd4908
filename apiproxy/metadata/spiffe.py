"""The SPIFFE trust bundle of the cluster's root CA (``/metadata/public/spiffe-bundle-endpoint``).

A JWK set as the SPIFFE Trust Domain and Bundle spec defines it: ``spiffe_sequence``,
``spiffe_refresh_hint`` and ``keys[]``, each key ``use: "x509-svid"`` with the root's public key members and
its DER in ``x5c``. RSA and EC roots are both rendered (Deckhouse's exporter only handles RSA); an Ed25519
root uses the ``OKP`` members. A root of any other type is a :class:`MetadataFormatError`.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from apiproxy.auth.keys import b64url_encode
from apiproxy.metadata.formats import MetadataFormatError, load_json

#: One fixed sequence (the document is derived, not versioned) and a 5-minute refresh hint, so a peer
#: notices a rotated root soon after it is published.
DEFAULT_SEQUENCE: Final = 1
DEFAULT_REFRESH_HINT: Final = 300

_CURVES: Final = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}


def _int_member(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def _jwk(certificate: x509.Certificate) -> dict[str, Any]:
    key = certificate.public_key()
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        jwk = {"kty": "RSA", "use": "x509-svid", "n": _int_member(numbers.n), "e": _int_member(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(key.curve.name)
        if curve is None:
            raise MetadataFormatError(f"root CA curve {key.curve.name} is not supported")
        name, size = curve
        point = key.public_numbers()
        jwk = {
            "kty": "EC",
            "use": "x509-svid",
            "crv": name,
            "x": _int_member(point.x, size),
            "y": _int_member(point.y, size),
        }
    elif isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "use": "x509-svid", "crv": "Ed25519", "x": b64url_encode(raw)}
    else:
        raise MetadataFormatError(f"root CA key type {type(key).__name__} is not supported")
    jwk["x5c"] = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")]
    return jwk


def spiffe_bundle(
    root_ca_pem: str, *, sequence: int = DEFAULT_SEQUENCE, refresh_hint: int = DEFAULT_REFRESH_HINT
) -> dict[str, Any]:
    """The bundle for every certificate in ``root_ca_pem`` (in file order)."""
    try:
        certificates = x509.load_pem_x509_certificates(root_ca_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise MetadataFormatError(f"rootCA is not PEM certificates: {exc}") from exc
    return {
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint,
        "keys": [_jwk(c) for c in certificates],
    }


def parse_spiffe_bundle(data: bytes | str) -> list[x509.Certificate]:
    """The root certificates of a bundle; each key must be ``x509-svid`` with exactly one ``x5c``."""
    where = "SPIFFE bundle"
    doc = load_json(data, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise MetadataFormatError(f"{where}: must be an object with a keys array")
    roots = []
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use") != "x509-svid":
            continue  # jwt-svid keys and future uses are not ours to judge
        chain = jwk.get("x5c")
        if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
            raise MetadataFormatError(f"{where}: key #{i} needs exactly one x5c certificate")
        try:
            roots.append(x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True)))
        except ValueError as exc:
            raise MetadataFormatError(f"{where}: key #{i} x5c is not a DER certificate: {exc}") from exc
    return roots
