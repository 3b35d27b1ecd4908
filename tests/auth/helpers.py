"""Helpers for the authentication tests (imported by the test files)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiproxy.auth.keys import PrivateKey, public_key_pem
from apiproxy.auth.mint import encode_jws

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "deckhouse"
ALPHA = "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8"
BETA = "c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"
LOCAL = (FIXTURES / "local-cluster-uuid").read_text().strip()
#: 2026-10-01: inside every fixture token's nbf..exp window except alpha-expired's.
NOW = 1_790_000_000.0


class Clock:
    """A settable clock for the verifier; no test sleeps."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    uuid: str
    key: PrivateKey

    def token(self, audience: str = LOCAL, *, header: Mapping[str, Any] | None = None, **claims: Any) -> str:
        """A signed token; claims default to a valid Deckhouse token at :data:`NOW`."""
        body: dict[str, Any] = {
            "iss": "d8-istio",
            "aud": audience,
            "sub": self.uuid,
            "scope": "api",
            "nbf": int(NOW) - 60,
            "exp": int(NOW) + 3600,
        }
        for name, value in claims.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return encode_jws(self.key, dict(header or {"alg": "EdDSA"}), body)


def deckhouse_entry(uuid: str, key: PrivateKey, root_pem: str = "") -> dict[str, str]:
    entry = {"clusterUUID": uuid, "authnKeyPub": public_key_pem(key.public_key(), deckhouse=True).decode()}
    if root_pem:
        entry["rootCA"] = root_pem
    return entry
