"""Fixtures for the authentication tests: the Deckhouse samples and generated clusters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.truststore import TrustStore, parse_trust_json
from tests.auth.helpers import FIXTURES, Clock, Cluster, deckhouse_entry


@pytest.fixture
def fixture_file(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a Deckhouse fixture into tmp_path (the tests never write into the fixtures)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        target.write_bytes((FIXTURES / name).read_bytes())
        return target

    return copy


@pytest.fixture
def deckhouse_store() -> TrustStore:
    return parse_trust_json((FIXTURES / "remote-public-metadata.json").read_bytes())


@pytest.fixture
def gamma() -> Cluster:
    return Cluster("0d6b6c2a-1111-4222-8333-944455556666", ed25519.Ed25519PrivateKey.generate())


@pytest.fixture
def gamma_store(gamma: Cluster) -> TrustStore:
    doc = {gamma.uuid: deckhouse_entry(gamma.uuid, gamma.key)}
    return parse_trust_json(json.dumps(doc).encode(), names={gamma.uuid: "gamma"})


@pytest.fixture
def clock() -> Clock:
    return Clock()
