"""The trust store: which remote clusters exist, their token-signing keys and their root CAs.

Inputs
------
``remote-public-metadata.json`` (Deckhouse, Secret ``d8-istio/d8-remote-clusters-public-metadata``):
a JSON object keyed by remote cluster UUID; each value ``{"clusterUUID", "authnKeyPub", "rootCA"}``.
Unknown members (``crl``, future ones) are ignored. Rules, all fail-closed (one broken entry fails the
whole load, so the caller keeps its last good snapshot):

* the object key is the cluster identity; ``clusterUUID``, when present, must equal it (a mismatch means a
  corrupt or hand-edited entry, and guessing which one is right could hand one cluster's key to another);
* ``authnKeyPub`` is a PEM public key (Deckhouse: ``ED25519 PUBLIC KEY``); ``rootCA`` is one or more PEM
  certificates; an entry must have at least one of them (empty strings count as absent);
* ``authnKeyPubNext`` (optional, ours) is a second key of the same cluster during a key rotation.

Optional JWKS file (for issuers other than Deckhouse): ``{"keys": [...]}``. Each JWK belongs to the cluster
named by its non-standard ``sub`` member when present, else by its ``kid``. This lets a cluster rotate keys
(several JWKs with the same ``sub`` and different ``kid``\\s) while the simple case (``kid`` = UUID) needs
nothing extra. JWKS keys are added to a cluster of the metadata file with the same UUID, or create a
cluster with no root CA.

Optional friendly names: ``{uuid: name}``; used in messages, logs and metrics, never for trust decisions.

:class:`TrustStore` is an immutable snapshot; :class:`TrustSource` re-reads the files when they change.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

from cryptography import x509

from apiproxy.auth.errors import KeyFormatError, TrustStoreError
from apiproxy.auth.keys import VerificationKey, load_public_key_pem, parse_jwks
from apiproxy.reload import Signature, file_signature

#: Refuse trust inputs bigger than this (a Secret is at most 1 MiB anyway).
MAX_INPUT_BYTES: Final = 4 * 1024 * 1024
_CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}")
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RemoteCluster:
    uuid: str
    name: str | None
    keys: tuple[VerificationKey, ...]
    root_cas: tuple[x509.Certificate, ...]

    @property
    def display(self) -> str:
        return self.name or self.uuid


@dataclass(frozen=True, slots=True)
class TrustStore:
    """An immutable snapshot; ``sha256`` identifies its inputs (for logs, metrics and change detection)."""

    clusters: Mapping[str, RemoteCluster] = field(default_factory=lambda: MappingProxyType({}))
    sha256: str = hashlib.sha256(b"").hexdigest()

    def get(self, uuid: str) -> RemoteCluster | None:
        return self.clusters.get(uuid)

    def __len__(self) -> int:
        return len(self.clusters)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self.clusters


def _check_cluster_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _CLUSTER_ID.fullmatch(value):
        raise TrustStoreError(f"{where}: cluster id {str(value)[:80]!r} is empty or has invalid characters")
    return value


def _pem_field(entry: Mapping[str, Any], name: str, where: str) -> str | None:
    value = entry.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TrustStoreError(f"{where}: {name} must be a PEM string")
    return value


def _parse_entry(uuid: str, entry: object, names: Mapping[str, str]) -> RemoteCluster:
    where = f"remote-public-metadata.json entry {uuid!r}"
    if not isinstance(entry, dict):
        raise TrustStoreError(f"{where}: value must be an object")
    declared = entry.get("clusterUUID")
    if declared is not None and declared != uuid:
        raise TrustStoreError(
            f"{where}: clusterUUID {str(declared)[:80]!r} does not match the entry key; refusing to guess"
        )
    keys: tuple[VerificationKey, ...] = ()
    for field_name in ("authnKeyPub", "authnKeyPubNext"):
        # authnKeyPubNext (ours; Deckhouse's readers ignore it): the key a peer is rotating to, trusted
        # beside the current one while its tokens switch over.
        pub = _pem_field(entry, field_name, where)
        if pub is not None:
            try:
                keys += (load_public_key_pem(pub),)
            except KeyFormatError as exc:
                raise TrustStoreError(f"{where}: {field_name}: {exc}") from exc
    roots: tuple[x509.Certificate, ...] = ()
    root_pem = _pem_field(entry, "rootCA", where)
    if root_pem is not None:
        try:
            roots = tuple(x509.load_pem_x509_certificates(root_pem.encode("ascii")))
        except (ValueError, UnicodeEncodeError) as exc:
            raise TrustStoreError(f"{where}: rootCA is not a valid PEM certificate: {exc}") from exc
    if not keys and not roots:
        raise TrustStoreError(f"{where}: has neither authnKeyPub nor rootCA")
    return RemoteCluster(uuid=uuid, name=names.get(uuid), keys=keys, root_cas=roots)


def _parse_metadata(data: bytes, names: Mapping[str, str]) -> dict[str, RemoteCluster]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrustStoreError(f"remote-public-metadata.json is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TrustStoreError("remote-public-metadata.json must be a JSON object keyed by cluster UUID")
    clusters: dict[str, RemoteCluster] = {}
    for uuid, entry in doc.items():
        _check_cluster_id(uuid, "remote-public-metadata.json")
        clusters[uuid] = _parse_entry(uuid, entry, names)
    return clusters


def _parse_jwks_clusters(data: bytes) -> dict[str, list[VerificationKey]]:
    try:
        entries = parse_jwks(data)
    except KeyFormatError as exc:
        raise TrustStoreError(f"JWKS: {exc}") from exc
    by_cluster: dict[str, list[VerificationKey]] = {}
    for index, (jwk, key) in enumerate(entries):
        owner = jwk.get("sub", jwk.get("kid"))
        if owner is None:
            raise TrustStoreError(f"JWKS key #{index}: needs a 'sub' or 'kid' naming its cluster")
        uuid = _check_cluster_id(owner, f"JWKS key #{index}")
        by_cluster.setdefault(uuid, []).append(key)
    return by_cluster


def _digest(trust_data: bytes | None, jwks_data: bytes | None, names: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for part in (trust_data, jwks_data, json.dumps(sorted(names.items())).encode()):
        if part is None:
            h.update(b"-")
        else:
            h.update(b"%d:" % len(part))
            h.update(part)
    return h.hexdigest()


def build_trust_store(
    trust_data: bytes | None,
    jwks_data: bytes | None = None,
    names: Mapping[str, str] = _EMPTY,
) -> TrustStore:
    """Build a snapshot from raw inputs (file contents or Secret data); raises :class:`TrustStoreError`."""
    for label, part in (("remote-public-metadata.json", trust_data), ("JWKS", jwks_data)):
        if part is not None and len(part) > MAX_INPUT_BYTES:
            raise TrustStoreError(f"{label} is larger than {MAX_INPUT_BYTES} bytes")
    clusters = _parse_metadata(trust_data, names) if trust_data is not None else {}
    if jwks_data is not None:
        for uuid, keys in _parse_jwks_clusters(jwks_data).items():
            existing = clusters.get(uuid)
            if existing is None:
                clusters[uuid] = RemoteCluster(uuid, names.get(uuid), tuple(keys), ())
            else:
                clusters[uuid] = RemoteCluster(
                    uuid, existing.name, existing.keys + tuple(keys), existing.root_cas
                )
    return TrustStore(clusters=MappingProxyType(clusters), sha256=_digest(trust_data, jwks_data, names))


def parse_trust_json(
    data: bytes,
    *,
    jwks: bytes | None = None,
    names: Mapping[str, str] = _EMPTY,
) -> TrustStore:
    """Parse Deckhouse ``remote-public-metadata.json`` content (optionally merged with a JWKS document)."""
    return build_trust_store(data, jwks, names)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise TrustStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise TrustStoreError(f"{path} is larger than {MAX_INPUT_BYTES} bytes")
    return data


def load_trust_store(
    trust_file: Path | None,
    jwks_file: Path | None = None,
    names: Mapping[str, str] = _EMPTY,
) -> TrustStore:
    """Read and parse the trust inputs; no file at all gives an empty store (every token is refused)."""
    trust_data = _read(trust_file) if trust_file is not None else None
    jwks_data = _read(jwks_file) if jwks_file is not None else None
    try:
        return build_trust_store(trust_data, jwks_data, names)
    except TrustStoreError as exc:
        raise TrustStoreError(f"{trust_file or jwks_file}: {exc}") from exc


# --- sources: the I/O edge ------------------------------------------------------------------------------


class TrustSnapshotSource(Protocol):
    """What the server needs: the current snapshot and a cheap, synchronous ``refresh()``."""

    @property
    def current(self) -> TrustStore: ...

    def refresh(self) -> bool: ...


_Signature = tuple[Signature | None, ...]


def _stat(path: Path | None) -> Signature | None:
    """The file's signature (following kubelet's ``..data`` symlink swaps); None if unset or unreadable."""
    return file_signature(path) if path is not None else None


class TrustSource:
    """The current :class:`TrustStore`, re-read from files when they change.

    ``refresh()`` is cheap when nothing changed (one ``stat`` per file). When a file's
    (inode, mtime, size) differs it reads and parses the inputs, and swaps the snapshot only if the
    content hash differs. Broken input raises :class:`TrustStoreError` and keeps the old snapshot; the
    same broken state is reported once (``last_error`` keeps it), not on every tick.
    The constructor loads the first snapshot and raises if that fails (refuse to start untrusted).
    """

    def __init__(
        self,
        trust_file: Path | None,
        jwks_file: Path | None = None,
        names: Mapping[str, str] = _EMPTY,
    ) -> None:
        self.trust_file = trust_file
        self.jwks_file = jwks_file
        self.names: Mapping[str, str] = MappingProxyType(dict(names))
        self._lock = threading.Lock()
        self._signature = self._stat_all()
        self._current = load_trust_store(trust_file, jwks_file, self.names)
        self._failed_signature: _Signature | None = None
        self.last_error: TrustStoreError | None = None

    @property
    def current(self) -> TrustStore:
        return self._current

    def _stat_all(self) -> _Signature:
        return (_stat(self.trust_file), _stat(self.jwks_file))

    def refresh(self, *, force: bool = False) -> bool:
        """Reload if the files changed; True when a new snapshot was installed.

        ``force`` skips the stat shortcut (use it now and then if a filesystem has coarse mtimes).
        """
        with self._lock:
            signature = self._stat_all()
            if not force and (signature == self._signature or signature == self._failed_signature):
                return False
            try:
                store = load_trust_store(self.trust_file, self.jwks_file, self.names)
            except TrustStoreError as exc:
                self._failed_signature = signature
                self.last_error = exc
                raise
            self._signature = signature
            self._failed_signature = None
            self.last_error = None
            if store.sha256 == self._current.sha256:
                return False
            self._current = store
            return True
