"""Trust store parsing (Deckhouse format, JWKS merge, names) and reloading from files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.keys import b64url_encode
from apiproxy.auth.truststore import (
    TrustSource,
    TrustStore,
    build_trust_store,
    load_trust_store,
    parse_trust_json,
)
from apiproxy.certs import make_ca
from tests.auth.helpers import ALPHA, BETA, FIXTURES, deckhouse_entry

METADATA = (FIXTURES / "remote-public-metadata.json").read_bytes()


def metadata(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(METADATA)
    for uuid, change in overrides.items():
        doc[uuid.replace("_", "-")] = change
    return doc


def test_deckhouse_fixture_loads(deckhouse_store: TrustStore) -> None:
    assert sorted(deckhouse_store.clusters) == sorted([ALPHA, BETA])
    alpha = deckhouse_store.clusters[ALPHA]
    assert alpha.name is None and alpha.display == ALPHA
    assert len(alpha.keys) == 1 and alpha.keys[0].algorithms == frozenset({"EdDSA"})
    assert [c.subject.rfc4514_string() for c in alpha.root_cas] == ["CN=Root CA alpha,O=cluster.local"]
    assert len(deckhouse_store.sha256) == 64
    assert ALPHA in deckhouse_store and deckhouse_store.get("nope") is None


def test_same_input_same_hash_and_names_change_it() -> None:
    a, b = parse_trust_json(METADATA), parse_trust_json(METADATA)
    assert a.sha256 == b.sha256
    named = parse_trust_json(METADATA, names={ALPHA: "alpha"})
    assert named.sha256 != a.sha256
    assert named.clusters[ALPHA].display == "alpha" and named.clusters[BETA].name is None


def test_unknown_members_are_ignored() -> None:
    doc = json.loads(METADATA)
    doc[ALPHA]["crl"] = "-----BEGIN X509 CRL-----\n...\n-----END X509 CRL-----\n"
    doc[ALPHA]["somethingNew"] = {"nested": True}
    assert len(parse_trust_json(json.dumps(doc).encode())) == 2


def test_empty_object_is_an_empty_store() -> None:
    assert len(parse_trust_json(b"{}")) == 0
    assert len(load_trust_store(None, None)) == 0


def test_clusteruuid_is_optional_but_must_match() -> None:
    doc = json.loads(METADATA)
    del doc[ALPHA]["clusterUUID"]
    assert ALPHA in parse_trust_json(json.dumps(doc).encode())
    doc[ALPHA]["clusterUUID"] = BETA
    with pytest.raises(TrustStoreError, match=f"entry '{ALPHA}'.*clusterUUID .* does not match"):
        parse_trust_json(json.dumps(doc).encode())


def test_store_is_immutable(deckhouse_store: TrustStore) -> None:
    with pytest.raises(TypeError):
        deckhouse_store.clusters["x"] = deckhouse_store.clusters[ALPHA]  # type: ignore[index]
    with pytest.raises(AttributeError):
        deckhouse_store.sha256 = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps({ALPHA: "string"}).encode(), f"entry '{ALPHA}': value must be an object"),
        (json.dumps({ALPHA: {}}).encode(), "neither authnKeyPub nor rootCA"),
        (json.dumps({"": {"authnKeyPub": "x"}}).encode(), "cluster id"),
        (json.dumps({"a b": {"authnKeyPub": "x"}}).encode(), "cluster id"),
    ],
)
def test_corrupt_input(data: bytes, match: str) -> None:
    with pytest.raises(TrustStoreError, match=match):
        parse_trust_json(data)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (
            "authnKeyPub",
            "-----BEGIN ED25519 PUBLIC KEY-----\nAAAA\n-----END ED25519 PUBLIC KEY-----\n",
            "authnKeyPub",
        ),
        ("authnKeyPub", "garbage", "authnKeyPub: no PEM block"),
        ("authnKeyPub", 42, "must be a PEM string"),
        ("rootCA", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "rootCA is not a valid"),
        ("rootCA", "garbage", "rootCA is not a valid"),
    ],
)
def test_bad_pem_names_the_entry(field: str, value: Any, match: str) -> None:
    doc = json.loads(METADATA)
    doc[BETA][field] = value
    with pytest.raises(TrustStoreError, match=match) as info:
        parse_trust_json(json.dumps(doc).encode())
    assert BETA in str(info.value)


def test_root_ca_bundle_and_key_only_entries() -> None:
    one, two = make_ca("one"), make_ca("two")
    key = ed25519.Ed25519PrivateKey.generate()
    doc = {
        "bundle": {"rootCA": (one.cert_pem + two.cert_pem).decode()},
        "keyonly": deckhouse_entry("keyonly", key) | {"rootCA": ""},
    }
    store = parse_trust_json(json.dumps(doc).encode())
    assert len(store.clusters["bundle"].root_cas) == 2 and store.clusters["bundle"].keys == ()
    assert store.clusters["keyonly"].root_cas == () and len(store.clusters["keyonly"].keys) == 1


def _okp(key: ed25519.Ed25519PrivateKey, **members: str) -> dict[str, str]:
    raw = key.public_key().public_bytes_raw()
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), **members}


def test_jwks_merge() -> None:
    k1, k2, k3 = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
    jwks = {
        "keys": [
            _okp(k1, kid=ALPHA),
            _okp(k2, kid="2026-01", sub="delta"),
            _okp(k3, kid="2026-02", sub="delta"),
        ]
    }
    store = build_trust_store(METADATA, json.dumps(jwks).encode(), {"delta": "Delta"})
    assert len(store.clusters[ALPHA].keys) == 2  # Deckhouse key + the JWKS one
    assert len(store.clusters[ALPHA].root_cas) == 1
    delta = store.clusters["delta"]
    assert (
        delta.name == "Delta"
        and [k.kid for k in delta.keys] == ["2026-01", "2026-02"]
        and delta.root_cas == ()
    )


def test_jwks_errors() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(TrustStoreError, match="needs a 'sub' or 'kid'"):
        build_trust_store(None, json.dumps({"keys": [_okp(key)]}).encode())
    with pytest.raises(TrustStoreError, match="JWKS"):
        build_trust_store(None, b'{"keys": [{"kty": "oct", "k": "AAAA"}]}')


def test_load_trust_store_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "remote-public-metadata.json"
    bad.write_text("{")
    with pytest.raises(TrustStoreError, match=str(bad)):
        load_trust_store(bad, None)
    with pytest.raises(TrustStoreError, match="cannot read"):
        load_trust_store(tmp_path / "missing.json", None)


# --- TrustSource: reloading ---------------------------------------------------------------------------


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_refresh_add_remove_corrupt(fixture_file: Callable[[str], Path]) -> None:
    path = fixture_file("remote-public-metadata.json")
    source = TrustSource(path)
    assert len(source.current) == 2
    assert source.refresh() is False  # nothing changed

    gamma = ed25519.Ed25519PrivateKey.generate()
    write(path, metadata(gamma=deckhouse_entry("gamma", gamma)))
    assert source.refresh() is True
    assert sorted(source.current.clusters) == sorted([ALPHA, BETA, "gamma"])

    doc = metadata()
    del doc[BETA]
    write(path, doc)
    assert source.refresh() is True
    assert sorted(source.current.clusters) == [ALPHA]
    good = source.current

    path.write_text('{"broken": ')
    with pytest.raises(TrustStoreError, match="not valid JSON"):
        source.refresh()
    assert source.current is good and source.last_error is not None
    assert source.refresh() is False  # the same broken file is reported once, not every tick
    with pytest.raises(TrustStoreError):
        source.refresh(force=True)

    write(path, doc)
    assert source.refresh() is False  # fixed back to the same content: no new snapshot
    assert source.last_error is None and source.current is good


def test_rewrite_with_same_content_is_not_a_change(fixture_file: Callable[[str], Path]) -> None:
    path = fixture_file("remote-public-metadata.json")
    source = TrustSource(path)
    before = source.current
    path.write_bytes(METADATA + b"")
    os.utime(path, ns=(1, 1))
    assert source.refresh() is False and source.current is before


def test_deleted_file_keeps_old_snapshot(fixture_file: Callable[[str], Path]) -> None:
    path = fixture_file("remote-public-metadata.json")
    source = TrustSource(path)
    path.unlink()
    with pytest.raises(TrustStoreError, match="cannot read"):
        source.refresh()
    assert len(source.current) == 2


def test_first_load_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("nope")
    with pytest.raises(TrustStoreError):
        TrustSource(tmp_path / "t.json")


def _kubelet_publish(volume: Path, version: str, content: bytes) -> None:
    """What kubelet's atomic writer does: new timestamped dir, then swap the ..data symlink atomically."""
    data_dir = volume / f"..2026_01_01_{version}"
    data_dir.mkdir()
    (data_dir / "remote-public-metadata.json").write_bytes(content)
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, volume / "..data")
    link = volume / "remote-public-metadata.json"
    if not link.is_symlink():
        link.symlink_to("..data/remote-public-metadata.json")


def test_kubelet_symlink_swap_is_detected(tmp_path: Path) -> None:
    volume = tmp_path / "secret-volume"
    volume.mkdir()
    _kubelet_publish(volume, "a", METADATA)
    source = TrustSource(volume / "remote-public-metadata.json")
    assert len(source.current) == 2

    doc = metadata()
    del doc[ALPHA]
    _kubelet_publish(volume, "b", json.dumps(doc).encode())
    assert source.refresh() is True
    assert list(source.current.clusters) == [BETA]
    assert source.refresh() is False

    _kubelet_publish(volume, "c", b"{corrupt")
    with pytest.raises(TrustStoreError):
        source.refresh()
    assert list(source.current.clusters) == [BETA]


def test_jwks_file_change_is_detected(tmp_path: Path) -> None:
    jwks_path = tmp_path / "jwks.json"
    k1 = ed25519.Ed25519PrivateKey.generate()
    jwks_path.write_text(json.dumps({"keys": [_okp(k1, kid="one")]}))
    source = TrustSource(None, jwks_path)
    assert list(source.current.clusters) == ["one"]
    write(jwks_path, {"keys": [_okp(k1, kid="one"), _okp(k1, kid="two")]})
    assert source.refresh() is True
    assert sorted(source.current.clusters) == ["one", "two"]
