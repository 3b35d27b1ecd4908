"""A scripted peer for the reconcile tests: documents by URL, or a FetchError, and a record of requests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.multicluster.fetch import FetchError, TLSOptions

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "exporter"
ROOT_CA = (FIXTURES / "root-ca-ec.pem").read_text()
OUR_UUID = "0b5c1e3a-2f4d-4c6e-9a8b-7d6e5f4a3b2c"
PEER_UUID = "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8"
OTHER_UUID = "c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"
ENDPOINT = "https://peer.example/metadata/"
NOW = 1_790_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def public_doc(uuid: str, key: ed25519.Ed25519PrivateKey, root_ca: str = ROOT_CA) -> bytes:
    pem = public_key_pem(key.public_key(), deckhouse=True).decode()
    return json.dumps({"clusterUUID": uuid, "authnKeyPub": pem, "rootCA": root_ca}).encode()


def private_doc(**override: Any) -> bytes:
    doc: dict[str, Any] = {
        "clusterID": PEER_UUID,
        "apiHost": "api.peer.example:4443",
        "networkName": "network-cluster-local-123",
        "ingressGateways": [{"address": "203.0.113.7", "port": 15443}],
    }
    doc.update(override)
    return json.dumps(doc).encode()


@dataclass
class Request:
    url: str
    token: str | None
    tls: TLSOptions


@dataclass
class ScriptedPeer:
    """``answers`` maps a URL suffix to bytes or a FetchError; unknown URLs are FETCH_FAILED."""

    answers: dict[str, bytes | FetchError] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    @classmethod
    def healthy(cls, key: ed25519.Ed25519PrivateKey, uuid: str = PEER_UUID) -> ScriptedPeer:
        return cls(
            {
                "/metadata/public/public.json": public_doc(uuid, key),
                "/metadata/private/multicluster.json": private_doc(clusterID=uuid),
                "/api": b'{"kind":"APIVersions","versions":["v1"]}',
                "/readyz": b"ok",
            }
        )

    async def get(self, url: str, *, tls: TLSOptions, token: str | None = None) -> bytes:
        self.requests.append(Request(url, token, tls))
        for suffix, answer in self.answers.items():
            if url.endswith(suffix):
                if isinstance(answer, FetchError):
                    raise answer
                return answer
        raise FetchError("FetchFailed", f"no route to {url}")
