"""Pinning a peer's identity: the first ``clusterUUID`` + ``authnKeyPub`` seen is the one trusted.

Deckhouse trusts whatever the endpoint serves next, so whoever controls the endpoint (or its DNS) could
swap in their own key and receive API tokens. Here a change is refused until an administrator accepts it
by annotating the resource with the new key's fingerprint, or names the new UUID in
``spec.expectedClusterUUID``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from apiproxy.auth.keys import load_public_key
from apiproxy.metadata import PublicMetadata
from apiproxy.multicluster.conditions import Reason


def fingerprint(authn_key_pub: str) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo: independent of PEM label and line breaks."""
    key = load_public_key(authn_key_pub)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class Pin:
    """The identity recorded in ``status.pinnedIdentity``."""

    cluster_uuid: str
    key_fingerprint: str
    #: A next key the pinned key vouched for (a rotation under way at the peer): accepted when it
    #: becomes the current one, without an administrator.
    next_fingerprint: str | None = None

    def to_json(self) -> dict[str, str]:
        doc = {"clusterUUID": self.cluster_uuid, "authnKeyFingerprint": self.key_fingerprint}
        if self.next_fingerprint:
            doc["nextKeyFingerprint"] = self.next_fingerprint
        return doc

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> Pin | None:
        raw = (status or {}).get("pinnedIdentity")
        if not isinstance(raw, Mapping):
            return None
        uuid, fp = raw.get("clusterUUID"), raw.get("authnKeyFingerprint")
        nxt = raw.get("nextKeyFingerprint")
        if isinstance(uuid, str) and isinstance(fp, str) and uuid and fp:
            return cls(uuid, fp, nxt if isinstance(nxt, str) and nxt else None)
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """``accepted``: use ``observed`` and pin it; otherwise keep the old pin, ``reason`` says why."""

    accepted: bool
    pin: Pin | None
    reason: str
    message: str
    identity_changed: bool = False


def decide(
    observed: PublicMetadata,
    pinned: Pin | None,
    *,
    our_uuid: str,
    expected_uuid: str | None,
    accept_fingerprint: str | None,
    claimed_by_other: str | None = None,
    next_fingerprint: str | None = None,
) -> Decision:
    """Whether ``observed`` may become (or stay) the peer's trusted identity.

    ``claimed_by_other`` names another resource that already pinned the same UUID earlier: two
    resources for one peer would write one trust entry and two remote secrets that fight each other.
    ``next_fingerprint`` is the next key the observed key vouches for (its proof already verified).
    """
    uuid = observed.cluster_uuid.lower()
    fp = fingerprint(observed.authn_key_pub)
    new = Pin(uuid, fp, next_fingerprint)
    if uuid == our_uuid.lower():
        return Decision(False, pinned, Reason.OWN_UUID, f"peer claims this cluster's own UUID {uuid}")
    if claimed_by_other is not None:
        return Decision(
            False,
            pinned,
            Reason.DUPLICATE_PEER,
            f"cluster {uuid} is already the peer of IstioMulticluster {claimed_by_other}",
        )
    if expected_uuid is not None and uuid != expected_uuid:
        return Decision(
            False,
            pinned,
            Reason.UNEXPECTED_UUID,
            f"peer serves clusterUUID {uuid}, spec.expectedClusterUUID is {expected_uuid}",
        )
    if pinned is None or (pinned.cluster_uuid, pinned.key_fingerprint) == (uuid, fp):
        return Decision(True, new, Reason.FETCHED, f"cluster {uuid}, key {fp[:19]}…")
    if pinned.cluster_uuid == uuid and pinned.next_fingerprint == fp:
        return Decision(True, new, Reason.FETCHED, f"cluster {uuid} rotated to key {fp[:19]}…, vouched for")
    if accept_fingerprint is not None and accept_fingerprint == fp:
        return Decision(True, new, Reason.FETCHED, f"new identity {uuid} {fp[:19]}… accepted by annotation")
    if expected_uuid is not None and uuid != pinned.cluster_uuid:
        # The administrator named the new UUID in the spec: that is the acceptance.
        return Decision(
            True, new, Reason.FETCHED, f"new identity {uuid} accepted by spec.expectedClusterUUID"
        )
    return Decision(
        False,
        pinned,
        Reason.IDENTITY_CHANGED,
        f"peer identity changed from {pinned.cluster_uuid} {pinned.key_fingerprint} to {uuid} {fp}; "
        f"not applied: to accept, annotate apiproxy.io/accept-identity={fp}",
        identity_changed=True,
    )
