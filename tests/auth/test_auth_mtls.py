"""Client-certificate identity: attribution by cluster root, by SAN, the CA bundle, combining credentials."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from apiproxy.auth.errors import AuthenticationError
from apiproxy.auth.mtls import PeerIdentifier, build_client_ca_bundle, combine, identify_peer
from apiproxy.auth.principal import Principal
from apiproxy.auth.truststore import TrustStore, parse_trust_json
from apiproxy.certs import Issued, make_ca, make_leaf

ALPHA, BETA = "alpha-uuid", "beta-uuid"
GATEWAY = "spiffe://cluster.local/ns/d8-istio/sa/multicluster-gateway"


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def roots() -> dict[str, Issued]:
    return {"alpha": make_ca("Root CA alpha"), "beta": make_ca("Root CA beta"), "channel": make_ca("channel")}


@pytest.fixture(scope="module")
def store(roots: dict[str, Issued]) -> TrustStore:
    doc = {
        ALPHA: {"clusterUUID": ALPHA, "rootCA": roots["alpha"].cert_pem.decode()},
        BETA: {"clusterUUID": BETA, "rootCA": roots["beta"].cert_pem.decode()},
    }
    return parse_trust_json(json.dumps(doc).encode(), names={ALPHA: "alpha"})


def test_leaf_issued_by_alpha_root_is_alpha(roots: dict[str, Issued], store: TrustStore) -> None:
    leaf = make_leaf(roots["alpha"], "istiod", names=[GATEWAY], client=True)
    assert identify_peer(der(leaf), store, {}) == Principal(ALPHA, "alpha", "mtls", GATEWAY)
    other = make_leaf(roots["beta"], "istiod", client=True)
    principal = identify_peer(der(other), store, {})
    assert principal is not None and principal.cluster_uuid == BETA and principal.subject == "CN=istiod"


def test_unknown_issuer_is_nobody(store: TrustStore) -> None:
    stranger = make_leaf(make_ca("stranger"), "x", names=[GATEWAY], client=True)
    assert identify_peer(der(stranger), store, {}) is None
    assert identify_peer(b"not a certificate", store, {}) is None


def test_same_name_different_key_is_nobody(store: TrustStore) -> None:
    impostor_root = make_ca("Root CA alpha")  # same subject as alpha's root, different key
    leaf = make_leaf(impostor_root, "x", client=True)
    assert leaf.cert.issuer == store.clusters[ALPHA].root_cas[0].subject
    assert identify_peer(der(leaf), store, {}) is None


def test_channel_ca_leaf_is_not_an_identity_without_san_map(
    roots: dict[str, Issued], store: TrustStore
) -> None:
    leaf = make_leaf(roots["channel"], "gateway", names=[GATEWAY], client=True)
    assert identify_peer(der(leaf), store, {}, client_cas=[roots["channel"].cert]) is None


def test_san_map_on_channel_ca_leaf(roots: dict[str, Issued], store: TrustStore) -> None:
    leaf = make_leaf(roots["channel"], "gateway", names=["gw.beta.example", GATEWAY], client=True)
    san_map = {"gw.beta.example": BETA}
    principal = identify_peer(der(leaf), store, san_map, client_cas=[roots["channel"].cert])
    assert principal == Principal(BETA, None, "mtls", "gw.beta.example")
    # Without knowing the channel CA the SAN is not believed (it could come from anyone's intermediate).
    assert identify_peer(der(leaf), store, san_map) is None


def test_san_map_cannot_cross_clusters(roots: dict[str, Issued], store: TrustStore) -> None:
    """alpha's root minting a SAN that maps to beta must not become beta."""
    leaf = make_leaf(roots["alpha"], "evil", names=["gw.beta.example"], client=True)
    with pytest.raises(AuthenticationError) as info:
        identify_peer(der(leaf), store, {"gw.beta.example": BETA})
    assert info.value.reason == "cluster_mismatch"
    # Mapping to its own cluster is fine.
    assert identify_peer(der(leaf), store, {"gw.beta.example": ALPHA}) is not None


def test_san_map_ambiguous(roots: dict[str, Issued], store: TrustStore) -> None:
    leaf = make_leaf(roots["channel"], "gw", names=["a.example", "b.example"], client=True)
    with pytest.raises(AuthenticationError) as info:
        identify_peer(
            der(leaf), store, {"a.example": ALPHA, "b.example": BETA}, client_cas=[roots["channel"].cert]
        )
    assert info.value.reason == "cluster_mismatch"


def test_shared_root_needs_san_map(roots: dict[str, Issued]) -> None:
    shared = roots["alpha"].cert_pem.decode()
    doc = {ALPHA: {"rootCA": shared}, BETA: {"rootCA": shared}}
    store = parse_trust_json(json.dumps(doc).encode())
    leaf = make_leaf(roots["alpha"], "gw", names=["gw.beta.example"], client=True)
    assert identify_peer(der(leaf), store, {}) is None
    principal = identify_peer(der(leaf), store, {"gw.beta.example": BETA})
    assert principal is not None and principal.cluster_uuid == BETA


def test_intermediate_needs_the_verified_chain(roots: dict[str, Issued], store: TrustStore) -> None:
    from cryptography.hazmat.primitives import hashes

    root = roots["alpha"]
    inter_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=intermediate alpha"))
        .issuer_name(root.cert.subject)
        .public_key(roots["beta"].key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root.cert.not_valid_before_utc)
        .not_valid_after(root.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    intermediate = Issued(inter_cert, roots["beta"].key)
    leaf = make_leaf(intermediate, "istiod", client=True)
    assert identify_peer(der(leaf), store, {}) is None  # Python 3.11: only the leaf is known
    chain = [der(leaf), der(intermediate), der(root)]
    principal = identify_peer(der(leaf), store, {}, chain=chain)
    assert principal is not None and principal.cluster_uuid == ALPHA


def test_client_ca_bundle(roots: dict[str, Issued], store: TrustStore) -> None:
    bundle = build_client_ca_bundle(roots["channel"].cert_pem, store)
    certs = x509.load_pem_x509_certificates(bundle)
    assert [c.subject for c in certs] == [roots[n].cert.subject for n in ("channel", "alpha", "beta")]
    # Duplicates are dropped; no client CA and no roots gives an empty bundle.
    assert build_client_ca_bundle(roots["alpha"].cert_pem, store).count(b"BEGIN CERTIFICATE") == 2
    assert build_client_ca_bundle(None, TrustStore()) == b""
    with pytest.raises(ValueError):
        build_client_ca_bundle(b"garbage", store)


def test_peer_identifier_caches_and_rebinds(roots: dict[str, Issued], store: TrustStore) -> None:
    peers = PeerIdentifier(store, {}, client_ca_pem=roots["channel"].cert_pem)
    leaf = der(make_leaf(roots["alpha"], "istiod", client=True))
    first = peers.identify(leaf)
    assert first is not None and peers.identify(leaf) is first
    without_alpha = parse_trust_json(json.dumps({BETA: {"rootCA": roots["beta"].cert_pem.decode()}}).encode())
    assert peers.with_trust(without_alpha).identify(leaf) is None


def test_combine() -> None:
    cert = Principal(ALPHA, "alpha", "mtls", GATEWAY)
    token = Principal(ALPHA, None, "jwt", ALPHA)
    assert combine(cert, None) is cert
    assert combine(None, token) is token
    assert combine(cert, token) == Principal(ALPHA, "alpha", "jwt+mtls", ALPHA)
    with pytest.raises(AuthenticationError) as info:
        combine(cert, Principal(BETA, "beta", "jwt", BETA))
    assert info.value.reason == "cluster_mismatch" and "alpha" in info.value.message
    with pytest.raises(AuthenticationError) as info:
        combine(None, None)
    assert info.value.reason == "missing"
