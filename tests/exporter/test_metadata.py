"""The document formats shared by the exporter and the controller: building and strict parsing."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apiproxy.certs import make_ca
from apiproxy.metadata import (
    MetadataFormatError,
    network_name,
    parse_federation,
    parse_multicluster,
    parse_public,
    parse_spiffe_bundle,
    spiffe_bundle,
)
from apiproxy.metadata.formats import check_api_host
from tests.exporter import cluster as c


def test_network_name_is_deckhouses_formula() -> None:
    # adler32("Wikipedia") = 0x11E60398 = 300286872, the textbook example value.
    assert network_name("cluster.local", "Wikipedia") == "network-cluster-local-300286872"
    assert network_name("corp.example.org", c.LOCAL_UUID) == (
        f"network-corp-example-org-{zlib.adler32(c.LOCAL_UUID.encode())}"
    )


@pytest.mark.parametrize("pem", [c.ROOT_RSA, c.ROOT_EC, make_ca("Ed-free EC root").cert_pem.decode()])
def test_spiffe_bundle_carries_each_root_with_its_key_members(pem: str) -> None:
    bundle = spiffe_bundle(pem + c.ROOT_RSA)
    assert bundle["spiffe_sequence"] == 1 and bundle["spiffe_refresh_hint"] > 0
    assert [k["use"] for k in bundle["keys"]] == ["x509-svid", "x509-svid"]
    roots = parse_spiffe_bundle(json.dumps(bundle))
    assert roots[0] == x509.load_pem_x509_certificate(pem.encode())
    key = roots[0].public_key()
    jwk = bundle["keys"][0]
    if isinstance(key, rsa.RSAPublicKey):
        n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=="), "big")
        assert jwk["kty"] == "RSA" and n == key.public_numbers().n
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        x = int.from_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="), "big")
        assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and x == key.public_numbers().x
    der = base64.b64decode(jwk["x5c"][0])
    assert der == roots[0].public_bytes(serialization.Encoding.DER)


def test_spiffe_bundle_refuses_what_is_not_a_certificate() -> None:
    with pytest.raises(MetadataFormatError):
        spiffe_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(MetadataFormatError):
        parse_spiffe_bundle('{"keys": [{"use": "x509-svid", "x5c": ["AAAA"]}]}')


def test_golden_documents_parse_and_bad_ones_do_not() -> None:
    public = json.loads((c.GOLDEN / "public.json").read_text())
    assert parse_public(json.dumps(public)).root_ca == c.ROOT_RSA
    for field, value in (("authnKeyPub", "nope"), ("rootCA", "nope"), ("clusterUUID", "")):
        with pytest.raises(MetadataFormatError):
            parse_public(json.dumps({**public, field: value}))
    multicluster = json.loads((c.GOLDEN / "multicluster.json").read_text())
    assert parse_multicluster(json.dumps(multicluster)).cluster_id == c.LOCAL_UUID
    for field, value in (("apiHost", "host:99999"), ("ingressGateways", {}), ("networkName", None)):
        with pytest.raises(MetadataFormatError):
            parse_multicluster(json.dumps({**multicluster, field: value}))
    federation = json.loads((c.GOLDEN / "federation.json").read_text())
    assert parse_federation(json.dumps(federation)).public_services[0].hostname.endswith(".svc.cluster.local")
    with pytest.raises(MetadataFormatError):
        parse_federation(
            json.dumps({**federation, "publicServices": [{"hostname": "x", "ports": [{"port": -1}]}]})
        )
    with pytest.raises(MetadataFormatError, match="duplicate"):
        parse_federation('{"ingressGateways": [], "publicServices": [], "publicServices": []}')


@pytest.mark.parametrize(
    "host", ["api.example.com", "api.example.com:443", "192.0.2.1:6443", "[2001:db8::1]:443"]
)
def test_api_host_accepts_host_and_port(host: str) -> None:
    assert check_api_host(host) == host


@pytest.mark.parametrize("host", ["", "https://api.example.com", "api:0", "[zz::1]:443", "a b:443", "h:1:2"])
def test_api_host_refuses_urls_and_junk(host: str) -> None:
    with pytest.raises(MetadataFormatError):
        check_api_host(host)
