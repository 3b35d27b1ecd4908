"""Authentication of remote clusters: trust store, bearer JWTs, client certificates.

Wiring (see each module for details)::

    source = TrustSource(trust_file, jwks_file, names)          # raises if the first load fails
    verifier = TokenVerifier(source.current, audience=LOCAL_UUID)
    peers = PeerIdentifier(source.current, san_map, client_ca_pem=client_ca)
    # periodically:
    if source.refresh():                                         # TrustStoreError: keep going, log it
        verifier = verifier.with_trust(source.current)
        peers = peers.with_trust(source.current)
        ssl_ctx.load_verify_locations(cadata=build_client_ca_bundle(client_ca, source.current).decode())
    # per request:
    principal = combine(peers.identify(peer_der) if peer_der else None,
                        verifier.verify(bearer_token(auth)) if auth else None)
"""

from apiproxy.auth.errors import REASONS, AuthenticationError, KeyFormatError, TrustStoreError
from apiproxy.auth.jwt import (
    DECKHOUSE_MAX_LIFETIME,
    DEFAULT_MAX_LIFETIME,
    MAX_TOKEN_LENGTH,
    TokenVerifier,
    bearer_token,
)
from apiproxy.auth.keys import VerificationKey, load_private_key, load_public_key, parse_jwks
from apiproxy.auth.mint import mint_token
from apiproxy.auth.mtls import PeerIdentifier, build_client_ca_bundle, combine, identify_peer
from apiproxy.auth.principal import Principal
from apiproxy.auth.truststore import (
    RemoteCluster,
    TrustSnapshotSource,
    TrustSource,
    TrustStore,
    build_trust_store,
    load_trust_store,
    parse_trust_json,
)

__all__ = [
    "DECKHOUSE_MAX_LIFETIME",
    "DEFAULT_MAX_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "REASONS",
    "AuthenticationError",
    "KeyFormatError",
    "PeerIdentifier",
    "Principal",
    "RemoteCluster",
    "TokenVerifier",
    "TrustSnapshotSource",
    "TrustSource",
    "TrustStore",
    "TrustStoreError",
    "VerificationKey",
    "bearer_token",
    "build_client_ca_bundle",
    "build_trust_store",
    "combine",
    "identify_peer",
    "load_private_key",
    "load_public_key",
    "load_trust_store",
    "mint_token",
    "parse_jwks",
    "parse_trust_json",
]
