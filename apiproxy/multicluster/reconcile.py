"""One peer's reconcile: public metadata → pin → private metadata → remote API check → desired state.

A function of the resource, a :class:`~apiproxy.multicluster.fetch.Fetcher`, our key and a clock; it
writes nothing. The caller writes the outputs it returns, then the status, so a crash between the two
leaves a state the next reconcile converges from (outputs are idempotent, status is last).

Transient failures never drop what was established: the pinned public document stays in the status (and
so in the trust store), and the remote secret is only replaced by a complete new one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apiproxy.auth.keys import PrivateKey
from apiproxy.metadata import (
    PATH_MULTICLUSTER,
    PATH_PUBLIC,
    MetadataFormatError,
    MulticlusterMetadata,
    PublicMetadata,
    parse_multicluster,
    parse_public,
)
from apiproxy.metadata.formats import load_json
from apiproxy.multicluster import conditions as cond
from apiproxy.multicluster import identity, outputs, tokens
from apiproxy.multicluster.conditions import Condition, Reason
from apiproxy.multicluster.fetch import Fetcher, FetchError, TLSOptions
from apiproxy.multicluster.model import PeerSpec, is_uuid
from apiproxy.multicluster.rotation import verify_proof

Clock = Callable[[], float]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Context:
    """What every reconcile needs besides the resource: who we are and how we sign."""

    our_uuid: str
    signing_key: PrivateKey
    api_token_ttl: float
    clock: Clock = time.time


@dataclass(slots=True)
class StepResult:
    """Per-step outcome, for metrics: ``step`` → (ok, url or host)."""

    public_ok: bool | None = None
    private_ok: bool | None = None
    api_ok: bool | None = None
    public_url: str = ""
    api_host: str = ""


@dataclass(slots=True)
class Result:
    status: dict[str, Any]
    changed: list[Condition]
    peer: outputs.PeerState
    remote_secret: dict[str, Any] | None
    token_expires: int | None
    ok: bool
    identity_changed: bool = False
    insecure: bool = False
    #: The peer belongs to another resource: delete this resource's remote secret.
    duplicate: bool = False
    steps: StepResult = field(default_factory=StepResult)


def _json_error(exc: MetadataFormatError, invalid_reason: str) -> str:
    return (
        Reason.INVALID_JSON if "not valid JSON" in str(exc) or "larger than" in str(exc) else invalid_reason
    )


async def reconcile(
    spec: PeerSpec,
    status: Mapping[str, Any] | None,
    ctx: Context,
    fetcher: Fetcher,
    *,
    generation: int | None = None,
    existing_api_token: str | None = None,
    claimed_by_other: Callable[[str], str | None] = lambda _uuid: None,
) -> Result:
    """Run the steps of the issue in order; a failing step marks the later ones as waiting."""
    status = dict(status or {})
    now = ctx.clock()
    tls = TLSOptions(spec.ca_pem, spec.insecure_skip_verify)
    cache: dict[str, Any] = dict(status.get("metadataCache") or {})
    pinned = identity.Pin.from_status(status)
    pinned_public = outputs.public_from_status(status)
    steps = StepResult(public_url=spec.document_url(PATH_PUBLIC.removeprefix("/metadata")))
    results: list[Condition] = []
    identity_changed = False
    duplicate = False
    accepted_next: str | None = None

    # 1. public metadata, pinned
    public: PublicMetadata | None = None
    try:
        raw = await fetcher.get(steps.public_url, tls=tls)
        observed = parse_public(raw)
        if not is_uuid(observed.cluster_uuid):
            raise MetadataFormatError("public.json: clusterUUID is not a UUID")
        next_key = _vouched_next_key(raw, observed)
        decision = identity.decide(
            observed,
            pinned,
            our_uuid=ctx.our_uuid,
            expected_uuid=spec.expected_cluster_uuid,
            accept_fingerprint=spec.accept_identity,
            claimed_by_other=claimed_by_other(observed.cluster_uuid.lower()),
            next_fingerprint=identity.fingerprint(next_key) if next_key else None,
        )
        identity_changed = decision.identity_changed
        if decision.reason == Reason.DUPLICATE_PEER:
            # Another resource owns this peer: this one must not contribute a trust entry, a mesh
            # network or a remote secret (two registries for one cluster would fight in istiod).
            pinned, pinned_public, duplicate = None, None, True
        if decision.accepted:
            public = PublicMetadata(observed.cluster_uuid.lower(), observed.authn_key_pub, observed.root_ca)
            pinned = decision.pin
            cache["public"] = public.to_json()
            if next_key:
                cache["public"]["authnKeyPubNext"] = next_key
            accepted_next = next_key
            cache["publicLastFetchTimestamp"] = rfc3339(now)
            results.append(Condition(cond.PUBLIC, True, Reason.FETCHED, decision.message))
        else:
            results.append(Condition(cond.PUBLIC, False, decision.reason, decision.message))
    except FetchError as exc:
        results.append(Condition(cond.PUBLIC, False, exc.reason, exc.message))
    except MetadataFormatError as exc:
        results.append(Condition(cond.PUBLIC, False, _json_error(exc, Reason.INVALID_PUBLIC), str(exc)[:300]))
    steps.public_ok = public is not None

    # 2. private metadata, with a one-minute token for the pinned peer
    private: MulticlusterMetadata | None = None
    if public is None:
        results.append(Condition(cond.PRIVATE, False, Reason.WAITING, "public metadata is not ready"))
    else:
        try:
            token = tokens.private_token(
                ctx.signing_key, our_uuid=ctx.our_uuid, peer_uuid=public.cluster_uuid, now=now
            )
            url = spec.document_url(PATH_MULTICLUSTER.removeprefix("/metadata"))
            private = parse_multicluster(await fetcher.get(url, tls=tls, token=token))
            if spec.enable_ingress_gateway and not private.ingress_gateways:
                raise MetadataFormatError(
                    "multicluster.json: no ingressGateways, and enableIngressGateway is true"
                )
            cache["private"] = private.to_json()
            cache["privateLastFetchTimestamp"] = rfc3339(now)
            results.append(
                Condition(
                    cond.PRIVATE,
                    True,
                    Reason.FETCHED,
                    f"apiHost {private.api_host}, network {private.network_name}",
                )
            )
        except FetchError as exc:
            results.append(Condition(cond.PRIVATE, False, exc.reason, exc.message))
        except MetadataFormatError as exc:
            private = None
            results.append(
                Condition(cond.PRIVATE, False, _json_error(exc, Reason.INVALID_PRIVATE), str(exc)[:300])
            )
    steps.private_ok = None if public is None else private is not None

    # 3. the remote API, with an API-scoped token (the one istiod will get)
    api_token: str | None = None
    token_expires: int | None = None
    if public is not None and private is not None:
        steps.api_host = private.api_host
        info = (
            tokens.inspect_own_token(
                existing_api_token, ctx.signing_key, our_uuid=ctx.our_uuid, peer_uuid=public.cluster_uuid
            )
            if existing_api_token
            else None
        )
        if tokens.needs_remint(info, now=now, ttl=ctx.api_token_ttl):
            api_token = tokens.api_token(
                ctx.signing_key,
                our_uuid=ctx.our_uuid,
                peer_uuid=public.cluster_uuid,
                now=now,
                ttl=ctx.api_token_ttl,
            )
            token_expires = int(now) + int(ctx.api_token_ttl)
        else:
            assert existing_api_token is not None and info is not None
            api_token, token_expires = existing_api_token, info.expires
        results.append(await _check_api(fetcher, private.api_host, tls, api_token))
        steps.api_ok = results[-1].ok
    elif (established := _established_api(status, pinned_public, existing_api_token, duplicate)) is not None:
        # The metadata could not be refreshed, but istiod still reads the peer with the remote secret
        # written before: check the API it uses, with its token, so the condition says whether the
        # peer's services are still current rather than merely that the metadata step failed.
        steps.api_host, token = established
        results.append(await _check_api(fetcher, steps.api_host, tls, token))
        steps.api_ok = results[-1].ok
    else:
        results.append(
            Condition(cond.REMOTE_API, False, Reason.WAITING_PRIVATE, "private metadata is not ready")
        )

    results.append(cond.ready(results))
    ok = all(c.ok for c in results)
    if spec.insecure_skip_verify:
        # Not a failure (the administrator asked for it), but visible: a condition beside Ready.
        results.append(
            Condition(cond.TLS_VERIFIED, False, Reason.INSECURE, "spec.metadata.insecureSkipVerify is set")
        )
    merged, changed = cond.merge(status.get("conditions"), results, now=rfc3339(now), generation=generation)

    # Pinned public metadata: the new document when accepted, else the one pinned before (kept on failure).
    effective_public = public if public is not None else pinned_public
    if public is None and pinned_public is not None:
        cache["public"] = pinned_public.to_json()
    if duplicate:
        cache.pop("public", None)
        cache.pop("private", None)
    effective_private = private if private is not None else outputs.private_from_status(status)
    if duplicate:
        effective_private = None

    new_status: dict[str, Any] = {
        "metadataCache": cache,
        "conditions": merged,
        "observedGeneration": generation,
    }
    if pinned is not None:
        new_status["pinnedIdentity"] = pinned.to_json()
    if token_expires is not None:
        new_status["apiTokenExpiry"] = rfc3339(token_expires)
    elif status.get("apiTokenExpiry"):
        new_status["apiTokenExpiry"] = status["apiTokenExpiry"]
    if effective_private is not None:
        new_status["apiHost"] = effective_private.api_host
    if effective_public is not None:
        new_status["remoteClusterUUID"] = effective_public.cluster_uuid

    remote = None
    if public is not None and private is not None and api_token is not None:
        remote = outputs.remote_secret(
            peer_name=spec.name,
            namespace="",
            api_host=private.api_host,
            cluster_id=private.cluster_id or spec.name,
            token=api_token,
            ca_pem=spec.ca_pem,
            insecure_skip_verify=spec.insecure_skip_verify,
        )
    effective_next = accepted_next if public is not None else outputs.next_key_from_status(status)
    if duplicate:
        effective_next = None
    peer = outputs.PeerState(
        spec.name, effective_public, effective_private, spec.enable_ingress_gateway, effective_next
    )
    return Result(
        status=new_status,
        changed=changed,
        peer=peer,
        remote_secret=remote,
        token_expires=token_expires,
        ok=ok,
        identity_changed=identity_changed,
        duplicate=duplicate,
        insecure=spec.insecure_skip_verify,
        steps=steps,
    )


def _established_api(
    status: Mapping[str, Any],
    pinned_public: PublicMetadata | None,
    existing_api_token: str | None,
    duplicate: bool,
) -> tuple[str, str] | None:
    """The API host and istiod's token of an established peer (pinned, its private metadata cached, a
    remote secret written), or None when nothing was established yet."""
    cached = outputs.private_from_status(status)
    if duplicate or pinned_public is None or cached is None or not existing_api_token:
        return None
    return cached.api_host, existing_api_token


def _vouched_next_key(raw: bytes, observed: PublicMetadata) -> str | None:
    """``authnKeyPubNext`` when ``authnKeyPubNextProof`` shows the observed current key vouches for it."""
    doc = load_json(raw, "public.json")
    next_pem, proof = doc.get("authnKeyPubNext"), doc.get("authnKeyPubNextProof")
    if not isinstance(next_pem, str) or not isinstance(proof, str):
        return None
    return next_pem if verify_proof(observed.authn_key_pub, next_pem, proof) else None


async def _check_api(fetcher: Fetcher, api_host: str, tls: TLSOptions, token: str) -> Condition:
    """``/api`` must be an ``APIVersions`` (an apiserver, not some web page), and ``/readyz`` must be 200."""
    base = f"https://{api_host}"
    try:
        body = await fetcher.get(base + "/api", tls=tls, token=token)
        try:
            doc = json.loads(body)
        except ValueError:
            return Condition(cond.REMOTE_API, False, Reason.NOT_APISERVER, f"{base}/api is not JSON")
        if not isinstance(doc, dict) or doc.get("kind") != "APIVersions":
            return Condition(
                cond.REMOTE_API, False, Reason.NOT_APISERVER, f"{base}/api is not an APIVersions"
            )
        await fetcher.get(base + "/readyz", tls=tls, token=token)
    except FetchError as exc:
        return Condition(cond.REMOTE_API, False, exc.reason, exc.message)
    return Condition(cond.REMOTE_API, True, Reason.REACHABLE, f"{base} answers /api and /readyz")
