"""Our token-signing keypair: Secret ``d8-remote-authn-keypair`` (``priv.pem``, ``pub.pem``).

Generated once, when absent, with Deckhouse's PEM labels (``ED25519 PRIVATE KEY`` / ``ED25519 PUBLIC
KEY``) so Deckhouse's exporter publishes it unchanged. Two controllers starting together both try to
create it; the loser reads the winner's (create is atomic at the apiserver), so both sign with one key.
The private key is never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import PrivateKey, load_private_key, public_key_pem
from apiproxy.multicluster import model
from apiproxy.multicluster.kube import Conflict, Objects, secret_body, secret_data

log = logging.getLogger("apiproxy.multicluster")

#: When ``apiproxy keys rotate`` started a rotation (see :mod:`apiproxy.multicluster.rotation`).
ROTATION_ANNOTATION: Final = "apiproxy.io/rotation-started"


class KeypairError(Exception):
    """The keypair Secret exists but cannot be used; never overwritten (it may be an operator's key)."""


def private_key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.replace(b" PRIVATE KEY-----", b" ED25519 PRIVATE KEY-----")


def keypair_data(key: ed25519.Ed25519PrivateKey) -> dict[str, bytes]:
    return {"priv.pem": private_key_pem(key), "pub.pem": public_key_pem(key.public_key(), deckhouse=True)}


def _load(data: dict[str, bytes]) -> PrivateKey:
    try:
        key = load_private_key(data["priv.pem"])
    except (KeyError, KeyFormatError) as exc:
        raise KeypairError(f"Secret {model.KEYPAIR_SECRET}: priv.pem is missing or unusable") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeypairError(
            f"Secret {model.KEYPAIR_SECRET}: priv.pem is not an Ed25519 key (Deckhouse signs EdDSA)"
        )
    return key


async def ensure_keypair(objects: Objects, namespace: str) -> PrivateKey:
    """Read our signing key, creating the Secret first when it does not exist."""
    current = await objects.get("Secret", namespace, model.KEYPAIR_SECRET)
    if current is not None:
        return _load(secret_data(current))
    key = ed25519.Ed25519PrivateKey.generate()
    body = secret_body(
        model.KEYPAIR_SECRET,
        namespace,
        keypair_data(key),
        labels={model.MANAGED_BY_LABEL: model.MANAGED_BY},
    )
    try:
        await objects.create("Secret", namespace, body)
    except Conflict:
        winner = await objects.get("Secret", namespace, model.KEYPAIR_SECRET)
        if winner is None:
            raise KeypairError(f"Secret {model.KEYPAIR_SECRET} appeared and vanished; retry") from None
        return _load(secret_data(winner))
    log.info(
        "generated this cluster's token-signing keypair in Secret %s/%s", namespace, model.KEYPAIR_SECRET
    )
    return key


async def write_keyring(objects: Objects, current: Mapping[str, Any], keyring: Any) -> None:
    """Replace the keypair Secret's data with ``keyring``'s (a rotation started or finished), in one write
    conditioned on the ``resourceVersion`` read (a concurrent writer makes it a Conflict, retried later)."""
    meta = dict(current.get("metadata") or {})
    annotations = dict(meta.get("annotations") or {})
    started = keyring.started_annotation()
    if started:
        annotations[ROTATION_ANNOTATION] = started
    else:
        annotations.pop(ROTATION_ANNOTATION, None)
    body = secret_body(
        model.KEYPAIR_SECRET,
        str(meta.get("namespace")),
        keyring.secret_data(),
        labels=meta.get("labels") or None,
        annotations=annotations or None,
    )
    body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
    await objects.replace("Secret", str(meta.get("namespace")), model.KEYPAIR_SECRET, body)
