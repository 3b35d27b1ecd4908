"""Client-certificate identity: which remote cluster does a verified TLS peer certificate belong to?

The TLS layer (``ssl.CERT_REQUIRED`` with :func:`build_client_ca_bundle` as the trust bundle) has already
verified the chain. These helpers only *attribute* the verified leaf:

* **by root**: the leaf is directly issued by a cluster's ``rootCA`` (issuer name matches and the leaf's
  signature verifies with that root's key), or, when the caller passes the verified chain, a cluster's
  root appears in that chain;
* **by SAN**: a DNS or URI SAN (e.g. ``spiffe://cluster.local/ns/istio-system/sa/...``) is listed in
  ``san_map`` → cluster UUID. A SAN is believed only when the leaf comes from the operator's channel client
  CA, or from the root of the very cluster it names: otherwise any remote cluster's CA could mint a SAN
  naming another cluster.

Limitations: Python 3.11's ``ssl`` exposes only the peer's leaf certificate, not the verified chain, so a
leaf issued by an *intermediate* under a cluster root cannot be attributed (it returns ``None``). On
Python ≥ 3.13 pass ``chain=[c.public_bytes() ...]`` from ``SSLObject.get_verified_chain()``
(leaf first) and such leaves are attributed by the roots in the chain. Clusters sharing one root CA (a
mesh with a common root) cannot be told apart by root: those certificates need a ``san_map`` entry.

Note that a cluster root typically signs *every* workload certificate of that mesh; trusting it for
mTLS means any workload of that cluster is that cluster. Prefer a ``san_map`` naming the ingress
gateway's identity, or require a JWT as well (``combine``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from apiproxy.auth.errors import AuthenticationError
from apiproxy.auth.principal import Principal
from apiproxy.auth.truststore import TrustStore

_EMPTY: Final[Mapping[str, str]] = {}
_SHA256: Final = hashes.SHA256()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(_SHA256)


def build_client_ca_bundle(client_ca_pem: bytes | None, trust: TrustStore) -> bytes:
    """PEM bundle for the server's ``SSLContext.load_verify_locations(cadata=...)``.

    The configured channel client CA(s) first, then every remote cluster's root CA, without duplicates,
    in a stable order. An empty result means no client certificate can verify: the server should then
    not request client certificates at all.
    """
    certs: list[x509.Certificate] = []
    if client_ca_pem:
        try:
            certs.extend(x509.load_pem_x509_certificates(client_ca_pem))
        except ValueError as exc:
            raise ValueError(f"client CA is not a valid PEM certificate bundle: {exc}") from exc
    for uuid in sorted(trust.clusters):
        certs.extend(trust.clusters[uuid].root_cas)
    seen: set[bytes] = set()
    out: list[bytes] = []
    for cert in certs:
        fp = _fingerprint(cert)
        if fp not in seen:
            seen.add(fp)
            out.append(_pem(cert))
    return b"".join(out)


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    if leaf.issuer != issuer.subject:
        return False
    try:
        leaf.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _sans(leaf: x509.Certificate) -> list[str]:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.UniformResourceIdentifier), *ext.get_values_for_type(x509.DNSName)]


def identify_peer(
    cert_der: bytes,
    trust: TrustStore,
    san_map: Mapping[str, str] = _EMPTY,
    *,
    client_cas: Sequence[x509.Certificate] = (),
    chain: Sequence[bytes] | None = None,
) -> Principal | None:
    """The remote cluster a TLS-verified peer certificate belongs to, or ``None`` if it names none.

    ``client_cas`` are the channel client CA certificates (SANs of leaves they issue are believed);
    ``chain`` is the verified chain in DER, leaf first, where the runtime offers one (Python ≥ 3.13).
    Raises ``AuthenticationError("cluster_mismatch")`` when the certificate contradicts itself: SANs mapping
    to several clusters, or a SAN naming a cluster other than the one whose root issued it.
    """
    try:
        leaf = x509.load_der_x509_certificate(cert_der)
        upper = [x509.load_der_x509_certificate(c) for c in (chain or ())[1:]]
    except ValueError:
        return None

    issuers: dict[str, None] = {}  # cluster UUIDs whose root issued this leaf; ordered set
    upper_fps = {_fingerprint(c) for c in upper}
    for uuid, cluster in trust.clusters.items():
        for root in cluster.root_cas:
            if _issued_by(leaf, root) or _fingerprint(root) in upper_fps:
                issuers[uuid] = None
                break
    via_channel_ca = any(_issued_by(leaf, ca) for ca in client_cas) or (
        bool(upper_fps) and any(_fingerprint(ca) in upper_fps for ca in client_cas)
    )

    sans = _sans(leaf)
    mapped = {san: san_map[san] for san in sans if san in san_map}
    targets = set(mapped.values())
    if len(targets) > 1:
        raise AuthenticationError("cluster_mismatch", "client certificate SANs map to more than one cluster")
    if targets:
        (uuid,) = targets
        san = next(iter(mapped))
        if uuid in issuers or (not issuers and via_channel_ca):
            known = trust.get(uuid)
            return Principal(uuid, known.name if known else None, "mtls", san)
        if issuers:
            raise AuthenticationError(
                "cluster_mismatch", "client certificate names one cluster but was issued by another's CA"
            )
        return None
    if len(issuers) == 1:
        (uuid,) = issuers
        owner = trust.clusters[uuid]
        subject = sans[0] if sans else leaf.subject.rfc4514_string()
        return Principal(uuid, owner.name, "mtls", subject)
    return None


class PeerIdentifier:
    """:func:`identify_peer` bound to one trust snapshot, with a small cache by certificate hash.

    Build a new one (or call :meth:`with_trust`) when the trust store changes.
    """

    def __init__(
        self,
        trust: TrustStore,
        san_map: Mapping[str, str] = _EMPTY,
        *,
        client_ca_pem: bytes | None = None,
        cache_size: int = 1024,
    ) -> None:
        self.trust = trust
        self.san_map = dict(san_map)
        self.client_ca_pem = client_ca_pem
        self.client_cas = tuple(x509.load_pem_x509_certificates(client_ca_pem)) if client_ca_pem else ()
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Principal | None] = OrderedDict()

    def with_trust(self, trust: TrustStore) -> PeerIdentifier:
        return PeerIdentifier(
            trust, self.san_map, client_ca_pem=self.client_ca_pem, cache_size=self.cache_size
        )

    def identify(self, cert_der: bytes, chain: Sequence[bytes] | None = None) -> Principal | None:
        key = hashlib.sha256(cert_der).digest()
        if chain is None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        result = identify_peer(cert_der, self.trust, self.san_map, client_cas=self.client_cas, chain=chain)
        if chain is None:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result


def combine(cert_principal: Principal | None, jwt_principal: Principal | None) -> Principal:
    """One identity from the two credentials; both present must name the same cluster."""
    if cert_principal is None and jwt_principal is None:
        raise AuthenticationError(
            "missing", "no credentials: send 'Authorization: Bearer <JWT>' or a client certificate"
        )
    if cert_principal is None:
        assert jwt_principal is not None
        return jwt_principal
    if jwt_principal is None:
        return cert_principal
    if cert_principal.cluster_uuid != jwt_principal.cluster_uuid:
        raise AuthenticationError(
            "cluster_mismatch",
            f"client certificate identifies {cert_principal.display} "
            f"but the bearer token identifies {jwt_principal.display}",
        )
    return Principal(
        cluster_uuid=jwt_principal.cluster_uuid,
        cluster_name=jwt_principal.cluster_name or cert_principal.cluster_name,
        method="jwt+mtls",
        subject=jwt_principal.subject,
        expires_at=jwt_principal.expires_at,
    )
