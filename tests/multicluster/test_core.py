"""The controller's pure core: spec, pinning, tokens, conditions, outputs, backoff, one peer's reconcile."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from apiproxy.auth.keys import public_key_pem
from apiproxy.auth.truststore import parse_trust_json
from apiproxy.metadata import parse_public
from apiproxy.multicluster import conditions as cond
from apiproxy.multicluster import identity, outputs, tokens
from apiproxy.multicluster.backoff import resync_delay, retry_delay
from apiproxy.multicluster.conditions import Condition, Reason
from apiproxy.multicluster.fetch import FetchError
from apiproxy.multicluster.model import ACCEPT_IDENTITY_ANNOTATION, SpecError, parse_spec
from apiproxy.multicluster.reconcile import Context, Result, reconcile
from tests.multicluster.peers import (
    ENDPOINT,
    NOW,
    OTHER_UUID,
    OUR_UUID,
    PEER_UUID,
    ROOT_CA,
    Clock,
    ScriptedPeer,
    private_doc,
    public_doc,
)

DAY = 86400.0
OUR_KEY = ed25519.Ed25519PrivateKey.generate()
PEER_KEY = ed25519.Ed25519PrivateKey.generate()


def ctx(clock: Clock | None = None, ttl: float = 30 * DAY) -> Context:
    return Context(our_uuid=OUR_UUID, signing_key=OUR_KEY, api_token_ttl=ttl, clock=clock or Clock())


def spec(**fields: Any) -> Any:
    body: dict[str, Any] = {"metadataEndpoint": ENDPOINT}
    annotations = fields.pop("annotations", None)
    body.update(fields)
    return parse_spec("east", body, annotations)


def conditions_of(result: Result) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in result.status["conditions"]}


def reason(result: Result, kind: str) -> str:
    return str(conditions_of(result)[kind]["reason"])


def claims(token: str, audience: str = PEER_UUID) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(
        token,
        OUR_KEY.public_key(),
        algorithms=["EdDSA"],
        audience=audience,
        options={"verify_nbf": False, "verify_exp": False},
    )
    return decoded


# --- spec ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "metadataEndpoint is required"),
        ({"metadataEndpoint": "http://peer/metadata/"}, "https:// or file://"),
        ({"metadataEndpoint": "https:///metadata/"}, "no host"),
        ({"metadataEndpoint": "https://peer/metadata/?x=1"}, "query"),
        ({"metadataEndpoint": ENDPOINT, "enableIngressGateway": "yes"}, "boolean"),
        ({"metadataEndpoint": ENDPOINT, "metadata": {"insecureSkipVerify": 1}}, "boolean"),
        ({"metadataEndpoint": ENDPOINT, "expectedClusterUUID": "not-a-uuid"}, "not a UUID"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(body: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec("x", body)


def test_spec_defaults_and_document_urls() -> None:
    peer = parse_spec(
        "east", {"metadataEndpoint": "https://peer/metadata"}, {ACCEPT_IDENTITY_ANNOTATION: "sha256:ab"}
    )
    assert peer.enable_ingress_gateway is True and peer.insecure_skip_verify is False
    assert peer.accept_identity == "sha256:ab"
    assert peer.document_url("/public/public.json") == "https://peer/metadata/public/public.json"
    assert parse_spec("e", {"metadataEndpoint": ENDPOINT}).document_url("public/public.json") == (
        "https://peer.example/metadata/public/public.json"
    )


# --- identity --------------------------------------------------------------------------------------------


def observed(uuid: str = PEER_UUID, key: ed25519.Ed25519PrivateKey = PEER_KEY) -> Any:
    return parse_public(public_doc(uuid, key))


def test_fingerprint_ignores_the_pem_label() -> None:
    deckhouse = public_key_pem(PEER_KEY.public_key(), deckhouse=True).decode()
    standard = public_key_pem(PEER_KEY.public_key()).decode()
    assert identity.fingerprint(deckhouse) == identity.fingerprint(standard)
    assert identity.fingerprint(deckhouse).startswith("sha256:")


def test_first_identity_is_pinned_and_the_same_one_stays_accepted() -> None:
    first = identity.decide(observed(), None, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=None)
    assert first.accepted and first.pin is not None
    again = identity.decide(
        observed(), first.pin, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=None
    )
    assert again.accepted and again.pin == first.pin


def test_a_changed_key_is_refused_until_its_fingerprint_is_accepted() -> None:
    pin = identity.Pin(PEER_UUID, identity.fingerprint(public_key_pem(PEER_KEY.public_key()).decode()))
    other_key = ed25519.Ed25519PrivateKey.generate()
    new = observed(key=other_key)
    refused = identity.decide(new, pin, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=None)
    assert not refused.accepted and refused.reason == Reason.IDENTITY_CHANGED and refused.pin == pin
    assert refused.identity_changed
    new_fp = identity.fingerprint(new.authn_key_pub)
    assert new_fp in refused.message  # the message tells the admin what to accept
    wrong = identity.decide(new, pin, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint="sha256:00")
    assert not wrong.accepted
    accepted = identity.decide(new, pin, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=new_fp)
    assert accepted.accepted and accepted.pin == identity.Pin(PEER_UUID, new_fp)


def test_a_changed_uuid_is_accepted_only_when_the_spec_names_it() -> None:
    pin = identity.Pin(PEER_UUID, "sha256:old")
    moved = observed(uuid=OTHER_UUID)
    assert not identity.decide(
        moved, pin, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=None
    ).accepted
    named = identity.decide(moved, pin, our_uuid=OUR_UUID, expected_uuid=OTHER_UUID, accept_fingerprint=None)
    assert named.accepted and named.pin is not None and named.pin.cluster_uuid == OTHER_UUID


def test_expected_uuid_refuses_another_peer_even_before_anything_is_pinned() -> None:
    decision = identity.decide(
        observed(), None, our_uuid=OUR_UUID, expected_uuid=OTHER_UUID, accept_fingerprint=None
    )
    assert not decision.accepted and decision.reason == Reason.UNEXPECTED_UUID and decision.pin is None


def test_a_peer_claiming_our_uuid_or_another_resources_peer_is_refused() -> None:
    own = identity.decide(
        observed(uuid=OUR_UUID), None, our_uuid=OUR_UUID, expected_uuid=None, accept_fingerprint=None
    )
    assert not own.accepted and own.reason == Reason.OWN_UUID
    dup = identity.decide(
        observed(),
        None,
        our_uuid=OUR_UUID,
        expected_uuid=None,
        accept_fingerprint=None,
        claimed_by_other="west",
    )
    assert not dup.accepted and dup.reason == Reason.DUPLICATE_PEER and "west" in dup.message


# --- tokens ----------------------------------------------------------------------------------------------


def test_private_token_has_deckhouse_claims_and_lives_one_minute() -> None:
    token = tokens.private_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA"}
    assert claims(token) == {
        "iss": "d8-istio",
        "aud": PEER_UUID,
        "sub": OUR_UUID,
        "scope": "private-multicluster",
        "nbf": int(NOW),
        "exp": int(NOW) + 60,
    }


def test_api_token_round_trips_through_inspection() -> None:
    token = tokens.api_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=30 * DAY)
    assert claims(token)["scope"] == "api"
    info = tokens.inspect_own_token(token, OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID)
    assert info == tokens.TokenInfo(int(NOW), int(NOW + 30 * DAY))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),  # signature
        lambda t: "x.y",
        lambda t: "",
        lambda t: tokens.api_token(
            ed25519.Ed25519PrivateKey.generate(), our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=DAY
        ),
        lambda t: tokens.api_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=OTHER_UUID, now=NOW, ttl=DAY),
        lambda t: tokens.private_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW),
    ],
)
def test_tokens_that_are_not_ours_for_this_peer_are_not_reused(mutate: Any) -> None:
    token = tokens.api_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=DAY)
    assert tokens.inspect_own_token(mutate(token), OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID) is None


def test_remint_when_a_third_of_the_life_remains() -> None:
    ttl = 30 * DAY
    info = tokens.TokenInfo(int(NOW), int(NOW + ttl))
    assert not tokens.needs_remint(info, now=NOW, ttl=ttl)
    assert not tokens.needs_remint(info, now=NOW + 20 * DAY - 1, ttl=ttl)
    assert tokens.needs_remint(info, now=NOW + 20 * DAY, ttl=ttl)
    assert tokens.needs_remint(None, now=NOW, ttl=ttl)
    # a shortened TTL replaces a longer-lived token at once
    assert tokens.needs_remint(tokens.TokenInfo(int(NOW), int(NOW + 366 * DAY)), now=NOW, ttl=ttl)


@given(
    ttl=st.integers(min_value=600, max_value=400 * 86400),
    elapsed=st.integers(min_value=0, max_value=400 * 86400),
)
def test_remint_boundary_is_two_thirds_of_the_life(ttl: int, elapsed: int) -> None:
    info = tokens.TokenInfo(0, ttl)
    assert tokens.needs_remint(info, now=float(elapsed), ttl=float(ttl)) == (ttl - elapsed <= ttl / 3)


# --- conditions ------------------------------------------------------------------------------------------


def test_conditions_keep_their_transition_time_and_report_only_transitions() -> None:
    first, changed = cond.merge(None, [Condition("A", True, "Ok", "m")], now="t1", generation=1)
    assert first[0]["lastTransitionTime"] == "t1" and [c.type for c in changed] == ["A"]
    same, changed = cond.merge(first, [Condition("A", True, "Ok", "m2")], now="t2", generation=2)
    assert same[0]["lastTransitionTime"] == "t1" and changed == []
    assert same[0]["message"] == "m2" and same[0]["observedGeneration"] == 2
    flipped, changed = cond.merge(same, [Condition("A", False, "FetchFailed", "x")], now="t3", generation=2)
    assert flipped[0]["lastTransitionTime"] == "t3" and [c.reason for c in changed] == ["FetchFailed"]


def test_ready_names_the_first_failing_step() -> None:
    steps = [
        Condition("A", True, "Ok", ""),
        Condition("B", False, "Timeout", "slow"),
        Condition("C", False, "X", ""),
    ]
    assert cond.ready(steps) == Condition("Ready", False, "Timeout", "B: slow")
    assert cond.ready(steps[:1]).ok


# --- backoff ---------------------------------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    delays = [retry_delay(n, base=5, cap=300, rand=lambda: 0.5) for n in range(1, 10)]
    assert delays[:4] == [5, 10, 20, 40] and delays[-1] == 300
    assert retry_delay(1000, rand=lambda: 1.0) == 300
    with pytest.raises(ValueError):
        retry_delay(0)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=1))
def test_backoff_stays_in_its_jitter_band(failures: int, r: float) -> None:
    delay = retry_delay(failures, base=5, cap=300, jitter=0.2, rand=lambda: r)
    raw = min(300, 5 * 2 ** min(failures - 1, 62))
    assert raw * 0.8 - 1e-9 <= delay <= min(300, raw * 1.2) + 1e-9


def test_resync_is_jittered_around_the_interval() -> None:
    assert resync_delay(60, rand=lambda: 0.0) == pytest.approx(54)
    assert resync_delay(60, rand=lambda: 1.0) == pytest.approx(66)


# --- outputs ---------------------------------------------------------------------------------------------


def peer_state(
    name: str, uuid: str, key: ed25519.Ed25519PrivateKey, private: bool = True
) -> outputs.PeerState:
    from apiproxy.metadata import parse_multicluster

    pub = parse_public(public_doc(uuid, key))
    priv = parse_multicluster(private_doc(clusterID=uuid, networkName=f"net-{name}")) if private else None
    return outputs.PeerState(name, pub, priv)


def test_trust_store_is_what_the_proxy_reads() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    data = outputs.trust_store(
        [
            peer_state("east", PEER_UUID, PEER_KEY),
            peer_state("west", OTHER_UUID, other),
            outputs.PeerState("x", None),
        ]
    )
    store = parse_trust_json(data)
    assert set(store.clusters) == {PEER_UUID, OTHER_UUID}
    assert data == outputs.trust_store(
        [peer_state("west", OTHER_UUID, other), peer_state("east", PEER_UUID, PEER_KEY)]
    ), "order of peers must not change the bytes"


def test_remote_secret_is_istiods_format() -> None:
    token = tokens.api_token(OUR_KEY, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=DAY)
    secret = outputs.remote_secret(
        peer_name="east",
        namespace="d8-istio",
        api_host="api.peer.example:4443",
        cluster_id=PEER_UUID,
        token=token,
        ca_pem=ROOT_CA,
        insecure_skip_verify=False,
    )
    assert secret["metadata"]["name"] == "istio-remote-secret-east"
    assert secret["metadata"]["labels"]["istio/multiCluster"] == "true"
    assert secret["metadata"]["annotations"]["networking.istio.io/cluster"] == PEER_UUID
    config = yaml.safe_load(secret["stringData"][PEER_UUID])
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://api.peer.example:4443"
    assert "certificate-authority-data" in cluster
    assert config["users"][0]["user"]["token"] == token
    without_ca = outputs.remote_secret(
        peer_name="east",
        namespace="d8-istio",
        api_host="h",
        cluster_id="c",
        token=token,
        ca_pem=None,
        insecure_skip_verify=False,
    )
    assert yaml.safe_load(without_ca["stringData"]["c"])["clusters"][0]["cluster"] == {"server": "https://h"}


def test_mesh_settings_list_each_peer_ca_and_network() -> None:
    mesh = outputs.mesh_settings(
        [peer_state("west", OTHER_UUID, PEER_KEY), peer_state("east", PEER_UUID, PEER_KEY)]
    )
    assert mesh["meshConfig"]["caCertificates"] == [{"pem": ROOT_CA}, {"pem": ROOT_CA}]
    assert mesh["meshNetworks"]["net-east"] == {
        "endpoints": [{"fromRegistry": PEER_UUID}],
        "gateways": [{"address": "203.0.113.7", "port": 15443}],
    }
    assert list(mesh["meshNetworks"]) == ["net-east", "net-west"]


# --- reconcile -------------------------------------------------------------------------------------------


async def test_establishment_pins_fetches_mints_and_checks_the_api() -> None:
    peer = ScriptedPeer.healthy(PEER_KEY)
    result = await reconcile(spec(), None, ctx(), peer, generation=3)
    assert result.ok
    assert {t: c["status"] for t, c in conditions_of(result).items()} == dict.fromkeys(cond.TYPES[:4], "True")
    assert result.status["observedGeneration"] == 3
    assert result.status["remoteClusterUUID"] == PEER_UUID
    assert result.status["metadataCache"]["publicLastFetchTimestamp"] == "2026-09-21T14:13:20Z"
    assert result.status["metadataCache"]["private"]["apiHost"] == "api.peer.example:4443"
    # private document fetched with a private-multicluster token for this peer
    private_request = peer.requests[1]
    assert private_request.url == "https://peer.example/metadata/private/multicluster.json"
    assert (
        private_request.token is not None and claims(private_request.token)["scope"] == "private-multicluster"
    )
    assert peer.requests[0].token is None, "public metadata is fetched without a token"
    api_request = peer.requests[2]
    assert api_request.url == "https://api.peer.example:4443/api"
    assert api_request.token is not None and claims(api_request.token)["scope"] == "api"
    assert result.remote_secret is not None
    assert result.token_expires == int(NOW + 30 * DAY)
    assert result.peer.public is not None and result.peer.public.cluster_uuid == PEER_UUID


async def test_a_resync_reuses_the_api_token_until_a_third_of_its_life_remains() -> None:
    clock = Clock()
    first = await reconcile(spec(), None, ctx(clock), ScriptedPeer.healthy(PEER_KEY))
    assert first.remote_secret is not None
    token = next(iter(first.remote_secret["stringData"].values()))
    old = yaml.safe_load(token)["users"][0]["user"]["token"]
    clock.now = NOW + 19 * DAY
    second = await reconcile(
        spec(), first.status, ctx(clock), ScriptedPeer.healthy(PEER_KEY), existing_api_token=old
    )
    assert second.remote_secret == first.remote_secret
    assert second.changed == []
    clock.now = NOW + 20 * DAY
    third = await reconcile(
        spec(), second.status, ctx(clock), ScriptedPeer.healthy(PEER_KEY), existing_api_token=old
    )
    assert third.remote_secret != first.remote_secret
    assert third.token_expires == int(NOW + 50 * DAY)
    assert third.status["apiTokenExpiry"] == "2026-11-10T14:13:20Z"


FAILURES = [
    (
        "/metadata/public/public.json",
        FetchError(Reason.FETCH_FAILED, "connection refused"),
        cond.PUBLIC,
        Reason.FETCH_FAILED,
    ),
    ("/metadata/public/public.json", FetchError(Reason.TIMEOUT, "slow"), cond.PUBLIC, Reason.TIMEOUT),
    ("/metadata/public/public.json", FetchError(Reason.REDIRECT, "302"), cond.PUBLIC, Reason.REDIRECT),
    ("/metadata/public/public.json", FetchError(Reason.TOO_LARGE, "big"), cond.PUBLIC, Reason.TOO_LARGE),
    ("/metadata/public/public.json", b"{not json", cond.PUBLIC, Reason.INVALID_JSON),
    (
        "/metadata/public/public.json",
        b'{"clusterUUID":"nope","authnKeyPub":"x","rootCA":"y"}',
        cond.PUBLIC,
        Reason.INVALID_PUBLIC,
    ),
    (
        "/metadata/private/multicluster.json",
        FetchError(Reason.TOKEN_REJECTED, "401"),
        cond.PRIVATE,
        Reason.TOKEN_REJECTED,
    ),
    ("/metadata/private/multicluster.json", b"[]", cond.PRIVATE, Reason.INVALID_PRIVATE),
    (
        "/metadata/private/multicluster.json",
        private_doc(ingressGateways=[]),
        cond.PRIVATE,
        Reason.INVALID_PRIVATE,
    ),
    ("/api", b"<html>", cond.REMOTE_API, Reason.NOT_APISERVER),
    ("/readyz", FetchError(Reason.NON_OK, "HTTP 500"), cond.REMOTE_API, Reason.NON_OK),
]


@pytest.mark.parametrize("suffix, answer, kind, why", FAILURES)
async def test_each_failure_sets_its_condition_and_keeps_what_was_established(
    suffix: str, answer: bytes | FetchError, kind: str, why: str
) -> None:
    established = await reconcile(spec(), None, ctx(), ScriptedPeer.healthy(PEER_KEY))
    peer = ScriptedPeer.healthy(PEER_KEY)
    peer.answers[suffix] = answer
    result = await reconcile(spec(), established.status, ctx(), peer)
    assert not result.ok
    assert reason(result, kind) == why
    assert conditions_of(result)["Ready"]["status"] == "False"
    assert conditions_of(result)["Ready"]["reason"] == why
    # the pinned peer stays trusted; the remote secret is left alone (None = do not write)
    assert result.peer.public == established.peer.public
    assert result.status["pinnedIdentity"] == established.status["pinnedIdentity"]
    assert result.status["metadataCache"]["public"] == established.status["metadataCache"]["public"]
    assert result.remote_secret is None or kind == cond.REMOTE_API


def istiod_token(result: Result) -> str:
    assert result.remote_secret is not None
    config = yaml.safe_load(next(iter(result.remote_secret["stringData"].values())))
    return str(config["users"][0]["user"]["token"])


@pytest.mark.parametrize(
    "down",
    [
        {"/metadata/public/public.json": FetchError(Reason.FETCH_FAILED, "connection refused")},
        {"/metadata/private/multicluster.json": FetchError(Reason.TIMEOUT, "slow")},
    ],
)
async def test_the_remote_api_of_an_established_peer_is_checked_while_its_metadata_endpoint_fails(
    down: dict[str, FetchError],
) -> None:
    established = await reconcile(spec(), None, ctx(), ScriptedPeer.healthy(PEER_KEY))
    token = istiod_token(established)
    peer = ScriptedPeer.healthy(PEER_KEY)
    peer.answers.update(down)
    result = await reconcile(spec(), established.status, ctx(), peer, existing_api_token=token)
    assert not result.ok and conditions_of(result)["Ready"]["status"] == "False"
    api = conditions_of(result)[cond.REMOTE_API]
    assert (api["status"], api["reason"]) == ("True", Reason.REACHABLE)
    assert [r.token for r in peer.requests if r.url.endswith(("/api", "/readyz"))] == [token, token]
    assert result.remote_secret is None, "nothing is re-minted or rewritten from a failed exchange"

    # the proxy down too: the condition says so, with the fetch reason
    peer.answers["/api"] = FetchError(Reason.FETCH_FAILED, "connection refused")
    both = await reconcile(spec(), result.status, ctx(), peer, existing_api_token=token)
    api = conditions_of(both)[cond.REMOTE_API]
    assert (api["status"], api["reason"]) == ("False", Reason.FETCH_FAILED)


async def test_without_istiods_token_a_failed_exchange_leaves_the_remote_api_waiting() -> None:
    established = await reconcile(spec(), None, ctx(), ScriptedPeer.healthy(PEER_KEY))
    peer = ScriptedPeer.healthy(PEER_KEY)
    peer.answers["/metadata/public/public.json"] = FetchError(Reason.FETCH_FAILED, "connection refused")
    foreign = tokens.api_token(
        ed25519.Ed25519PrivateKey.generate(), our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=DAY
    )
    for existing in (None, foreign):
        result = await reconcile(spec(), established.status, ctx(), peer, existing_api_token=existing)
        assert reason(result, cond.REMOTE_API) == Reason.WAITING_PRIVATE
    assert not [r for r in peer.requests if r.url.endswith("/api")]


async def test_metadata_down_before_establishment_leaves_the_api_waiting() -> None:
    peer = ScriptedPeer.healthy(PEER_KEY)
    peer.answers["/metadata/public/public.json"] = FetchError(Reason.FETCH_FAILED, "refused")
    result = await reconcile(spec(), None, ctx(), peer, existing_api_token="stale")
    assert reason(result, cond.REMOTE_API) == Reason.WAITING_PRIVATE
    assert [r.url for r in peer.requests] == ["https://peer.example/metadata/public/public.json"]


async def test_missing_gateways_are_fine_when_the_ingress_gateway_is_disabled() -> None:
    peer = ScriptedPeer.healthy(PEER_KEY)
    peer.answers["/metadata/private/multicluster.json"] = private_doc(ingressGateways=[])
    result = await reconcile(spec(enableIngressGateway=False), None, ctx(), peer)
    assert result.ok


async def test_a_changed_identity_is_not_applied_and_then_accepted_by_annotation() -> None:
    established = await reconcile(spec(), None, ctx(), ScriptedPeer.healthy(PEER_KEY))
    impostor = ed25519.Ed25519PrivateKey.generate()
    changed = await reconcile(spec(), established.status, ctx(), ScriptedPeer.healthy(impostor))
    assert reason(changed, cond.PUBLIC) == Reason.IDENTITY_CHANGED and changed.identity_changed
    assert changed.peer.public == established.peer.public, "the old key stays in the trust store"
    assert changed.remote_secret is None
    fp = identity.fingerprint(public_key_pem(impostor.public_key()).decode())
    accepted = await reconcile(
        spec(annotations={ACCEPT_IDENTITY_ANNOTATION: fp}),
        changed.status,
        ctx(),
        ScriptedPeer.healthy(impostor),
    )
    assert accepted.ok and accepted.status["pinnedIdentity"]["authnKeyFingerprint"] == fp
    assert (
        accepted.peer.public is not None
        and accepted.peer.public.authn_key_pub != established.peer.public.authn_key_pub
    )  # type: ignore[union-attr]


async def test_own_uuid_and_duplicates_never_reach_the_private_step() -> None:
    own = ScriptedPeer.healthy(PEER_KEY, uuid=OUR_UUID)
    result = await reconcile(spec(), None, ctx(), own)
    assert reason(result, cond.PUBLIC) == Reason.OWN_UUID and len(own.requests) == 1
    assert result.peer.public is None and "pinnedIdentity" not in result.status
    dup = ScriptedPeer.healthy(PEER_KEY)
    result = await reconcile(
        spec(), None, ctx(), dup, claimed_by_other=lambda u: "west" if u == PEER_UUID else None
    )
    assert reason(result, cond.PUBLIC) == Reason.DUPLICATE_PEER and len(dup.requests) == 1


async def test_insecure_skip_verify_is_visible_but_not_a_failure() -> None:
    peer = ScriptedPeer.healthy(PEER_KEY)
    result = await reconcile(spec(metadata={"insecureSkipVerify": True}), None, ctx(), peer)
    assert result.ok and result.insecure
    assert conditions_of(result)[cond.TLS_VERIFIED]["reason"] == Reason.INSECURE
    assert all(r.tls.insecure_skip_verify for r in peer.requests)


async def test_status_messages_never_carry_a_token() -> None:
    peer = ScriptedPeer.healthy(PEER_KEY)
    result = await reconcile(spec(), None, ctx(), peer)
    text = json.dumps(result.status)
    assert all(r.token is None or r.token not in text for r in peer.requests)
