"""Authentication end to end: Deckhouse tokens, minted tokens, client certificates, live trust changes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kubernetes
import pytest
from cryptography.hazmat.primitives import serialization

from apiproxy.auth.keys import b64url_encode
from apiproxy.auth.mint import mint_token, sign
from apiproxy.demo.sandbox import Sandbox, new_cluster, write_trust_file
from tests.helpers import KUBECTL, eventually, kubectl

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "deckhouse"
HAVE_KUBECTL = Path(KUBECTL).exists()


async def status_of(box: Sandbox, token: str | None, path: str = "/api/v1/pods?limit=1") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=box.client_ssl())) as session,
        session.get(box.proxy_url + path, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.read())


@pytest.fixture
async def deckhouse_box(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """The proxy of the fixtures' local cluster, trusting the fixtures' remote-public-metadata.json.

    The sample tokens live ten years, so the lifetime cap (400 days by default) is off here; the test
    after the next one shows the default refusing them."""
    box = Sandbox(
        tmp_path,
        local_uuid=(FIXTURES / "local-cluster-uuid").read_text().strip(),
        settings={"jwt_max_lifetime": 0.0},
    )
    shutil.copy(FIXTURES / "remote-public-metadata.json", box.trust_file)
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


@pytest.mark.parametrize(
    ("fixture", "code", "words"),
    [
        ("alpha-api.jwt", 200, ""),
        ("alpha-expired.jwt", 401, "expired"),
        ("alpha-private-scope.jwt", 401, "scope"),
        ("alpha-forged-by-beta.jwt", 401, "signature"),
    ],
)
async def test_deckhouse_fixture_tokens(deckhouse_box: Sandbox, fixture: str, code: int, words: str) -> None:
    token = (FIXTURES / fixture).read_text().strip()
    status, body = await status_of(deckhouse_box, token)
    assert status == code
    if code == 401:
        assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
        assert words in body["message"]
        assert token not in body["message"] and token.split(".")[1] not in json.dumps(body)
    assert deckhouse_box.simulator is not None
    if code != 200:  # a refused request never reaches the apiserver
        assert not [r for r in deckhouse_box.simulator.requests if r.raw_target.startswith("/api/v1/pods")]


async def test_default_lifetime_cap_refuses_the_ten_year_sample(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, local_uuid=(FIXTURES / "local-cluster-uuid").read_text().strip())
    shutil.copy(FIXTURES / "remote-public-metadata.json", box.trust_file)
    await box.start()
    try:
        status, body = await status_of(box, (FIXTURES / "alpha-api.jwt").read_text().strip())
    finally:
        await box.stop()
    assert status == 401
    assert "lifetime exceeds the allowed maximum" in body["message"]


def signed(box: Sandbox, header: bytes, claims: bytes) -> str:
    """A token of exactly these segment bytes, signed with alpha's real key (so only the checks under
    test can refuse it)."""
    signing_input = f"{b64url_encode(header)}.{b64url_encode(claims)}"
    signature = sign(box.clusters["alpha"].key, "EdDSA", signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def alpha_claims(box: Sandbox, exp: str) -> bytes:
    alpha = box.clusters["alpha"]
    return (
        f'{{"iss":"d8-istio","aud":"{box.local_uuid}","sub":"{alpha.uuid}","scope":"api",'
        f'"nbf":1700000000,"exp":{exp}}}'
    ).encode()


async def test_hostile_signed_tokens_are_401_statuses_never_500(sandbox: Sandbox) -> None:
    far = str(10**300)
    soon = "4102444800"  # 2100-01-01
    valid = signed(sandbox, b'{"alg":"EdDSA"}', alpha_claims(sandbox, soon))
    head, payload, signature = valid.split(".")
    # Same signature bytes, another spelling: the last character's unused low bits set.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 0b1111]
    hostile = {
        "exp of 301 digits": (
            signed(sandbox, b'{"alg":"EdDSA"}', alpha_claims(sandbox, far)),
            "exp out of range",
        ),
        "claims in UTF-16": (
            signed(sandbox, b'{"alg":"EdDSA"}', alpha_claims(sandbox, soon).decode().encode("utf-16")),
            "not UTF-8",
        ),
        "claims with a BOM": (
            signed(sandbox, b'{"alg":"EdDSA"}', b"\xef\xbb\xbf" + alpha_claims(sandbox, soon)),
            "byte order mark",
        ),
        "re-spelled signature": (f"{head}.{payload}.{respelled}", "not canonical"),
    }
    for name, (token, words) in hostile.items():
        status, body = await status_of(sandbox, token)
        assert status == 401, name
        assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401), name
        assert words in body["message"], (name, body["message"])
        assert token.split(".")[1][:40] not in json.dumps(body), name
    # The lifetime cap (400 days by default) is what refuses the otherwise valid token to 2100.
    status, body = await status_of(sandbox, valid)
    assert status == 401 and "lifetime" in body["message"]
    async with aiohttp.ClientSession() as session, session.get(sandbox.metrics_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'apiproxy_authentication_failures_total{reason="malformed"} 4.0' in metrics
    assert 'apiproxy_authentication_failures_total{reason="too_long_lived"} 1.0' in metrics
    assert sandbox.simulator is not None
    assert not [r for r in sandbox.simulator.requests if r.raw_target.startswith("/api/v1/pods")]


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (None, "no credentials"),
        ("Basic YWRtaW46YWRtaW4=", "Bearer"),
        ("Bearer not-a-jwt", "token"),
        ("Bearer a.b.c", "token"),
    ],
)
async def test_missing_or_malformed_credentials_get_401(
    sandbox: Sandbox, header: str | None, words: str
) -> None:
    headers = {"Authorization": header} if header else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sandbox.client_ssl())) as session,
        session.get(sandbox.proxy_url + "/api/v1/pods", headers=headers) as resp,
    ):
        assert resp.status == 401
        body = await resp.json()
    assert body["reason"] == "Unauthorized"
    assert words in body["message"]


async def test_token_for_another_audience_is_refused(sandbox: Sandbox) -> None:
    alpha = sandbox.clusters["alpha"]
    token = mint_token(alpha.key, alpha.uuid, "some-other-cluster", ttl=600)
    status, body = await status_of(sandbox, token)
    assert status == 401 and "audience" in body["message"]


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
async def test_kubectl_with_cli_minted_token_and_cli_kubeconfig(sandbox: Sandbox) -> None:
    alpha = sandbox.clusters["alpha"]
    key = sandbox.workdir / "alpha-priv.pem"
    key.write_bytes(
        alpha.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    token_file = sandbox.workdir / "alpha.jwt"
    kubeconfig = sandbox.workdir / "kubeconfig-cli"
    for args in (
        ["token", "mint", "--key", str(key), "--subject", alpha.uuid, "--audience", sandbox.local_uuid,
         "--ttl", "1h", "-o", str(token_file)],
        ["kubeconfig", "--server", sandbox.proxy_url, "--ca-file", str(sandbox.serving.ca_file),
         "--token-file", str(token_file), "--name", "alpha", "-o", str(kubeconfig)],
    ):  # fmt: skip
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "apiproxy", *args)
        assert await proc.wait() == 0
    result = await kubectl(kubeconfig, "get", "pods", "-A", "--no-headers")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) > 10


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
async def test_kubectl_shows_the_401_reason(sandbox: Sandbox) -> None:
    alpha, beta = sandbox.clusters["alpha"], sandbox.clusters["beta"]
    forged = mint_token(beta.key, alpha.uuid, sandbox.local_uuid, ttl=600)
    result = await kubectl(sandbox.kubeconfig("alpha", token=forged, name="forged"), "get", "pods")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "logged in" in result.stderr


async def test_python_client_gets_a_401_status_it_can_display(sandbox: Sandbox) -> None:
    alpha = sandbox.clusters["alpha"]
    expired = mint_token(alpha.key, alpha.uuid, sandbox.local_uuid, ttl=60, now=1_000_000)
    config = sandbox.kubeconfig("alpha", token=expired, name="expired")

    def call() -> kubernetes.client.exceptions.ApiException:
        api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(config)))
        try:
            api.list_pod_for_all_namespaces(limit=1)
        except kubernetes.client.exceptions.ApiException as exc:
            return exc
        raise AssertionError("the expired token was accepted")

    exc = await asyncio.to_thread(call)
    assert exc.status == 401
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and "expired" in body["message"]


async def test_trust_file_changes_take_effect_without_restart(sandbox: Sandbox) -> None:
    alpha, beta = sandbox.clusters["alpha"], sandbox.clusters["beta"]
    gamma = new_cluster("gamma", sandbox.local_uuid)
    assert (await status_of(sandbox, beta.token))[0] == 200  # beta's token is now cached
    assert (await status_of(sandbox, gamma.token))[0] == 401

    # Add gamma, remove beta: one atomic replace, as kubelet does.
    write_trust_file(sandbox.trust_file, [alpha, gamma])

    async def gamma_trusted() -> bool:
        return (await status_of(sandbox, gamma.token))[0] == 200

    await eventually(gamma_trusted)
    status, body = await status_of(sandbox, beta.token)
    assert status == 401 and "not a trusted" in body["message"]  # the cached verdict died with the old store

    # A corrupt file is refused; the last good store keeps serving.
    sandbox.trust_file.write_text("{ not json")
    assert sandbox.proxy is not None and sandbox.proxy.trust is not None
    trust = sandbox.proxy.trust
    await eventually(lambda: trust.last_error)
    assert (await status_of(sandbox, alpha.token))[0] == 200
    assert (await status_of(sandbox, gamma.token))[0] == 200
    # Still ready (the last good store serves), and the refusal is visible to whoever looks.
    async with (
        aiohttp.ClientSession() as plain,
        plain.get(sandbox.metrics_url + "/readyz?verbose") as resp,
    ):
        text = await resp.text()
    assert resp.status == 200
    assert "[!] refused new trust store" in text and "readyz check passed" in text


@pytest.fixture
async def mtls_box(tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(tmp_path, settings={"cert_identity": True})
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


def cert_session(box: Sandbox, cert: Path, key: Path) -> aiohttp.ClientSession:
    ctx = box.client_ssl()
    ctx.load_cert_chain(cert, key)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def test_client_certificate_identifies_its_cluster(mtls_box: Sandbox) -> None:
    alpha, beta = mtls_box.clusters["alpha"], mtls_box.clusters["beta"]
    cert, key = alpha.client_certificate(mtls_box.workdir)
    async with cert_session(mtls_box, cert, key) as session:
        async with session.get(mtls_box.proxy_url + "/api/v1/pods?limit=1") as resp:
            assert resp.status == 200
        # Certificate says alpha, token says beta: refused.
        async with session.get(
            mtls_box.proxy_url + "/api/v1/pods?limit=1", headers={"Authorization": f"Bearer {beta.token}"}
        ) as resp:
            assert resp.status == 401
            assert "identifies" in (await resp.json())["message"]
        async with session.get(
            mtls_box.proxy_url + "/api/v1/pods?limit=1", headers={"Authorization": f"Bearer {alpha.token}"}
        ) as resp:
            assert resp.status == 200


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
async def test_kubectl_with_a_client_certificate(mtls_box: Sandbox) -> None:
    alpha = mtls_box.clusters["alpha"]
    cert, key = alpha.client_certificate(mtls_box.workdir)
    kubeconfig = mtls_box.workdir / "kubeconfig-cert"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "kubeconfig", "--server", mtls_box.proxy_url,
        "--ca-file", str(mtls_box.serving.ca_file), "--client-cert", str(cert), "--client-key", str(key),
        "-o", str(kubeconfig),
    )  # fmt: skip
    assert await proc.wait() == 0
    result = await kubectl(kubeconfig, "get", "pods", "-A", "--no-headers")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) > 10


async def test_certificate_from_an_unknown_ca_never_gets_through(mtls_box: Sandbox) -> None:
    from apiproxy.certs import make_ca, make_leaf

    stranger = make_leaf(make_ca("stranger"), "stranger", server=False, client=True)
    stranger.write(mtls_box.workdir / "s.crt", mtls_box.workdir / "s.key")
    with pytest.raises(aiohttp.ClientError):
        async with (
            cert_session(mtls_box, mtls_box.workdir / "s.crt", mtls_box.workdir / "s.key") as session,
            session.get(mtls_box.proxy_url + "/api/v1/pods?limit=1") as resp,
        ):
            await resp.read()
    assert mtls_box.simulator is not None
    assert not [r for r in mtls_box.simulator.requests if r.raw_target.startswith("/api/v1/pods")]


async def test_a_proxy_with_no_peer_yet_is_ready_and_refuses_everyone(tmp_path: Path) -> None:
    """A fresh install trusts nobody until its first IstioMulticluster is Ready. That proxy serves
    correctly (every token is a 401), so it is Ready, or the Deployment would never become Available and
    every rollout would stall; ``?verbose`` and the ApiproxyNoTrustedClusters alert say it instead."""
    box = Sandbox(tmp_path, cluster_names=())
    await box.start()
    try:
        stranger = new_cluster("stranger", box.local_uuid)
        status, body = await status_of(box, stranger.token)
        assert status == 401 and "not a trusted" in body["message"], body
        async with aiohttp.ClientSession() as plain:
            async with plain.get(box.metrics_url + "/readyz?verbose") as resp:
                text = await resp.text()
            assert resp.status == 200, text
            assert "[!] trust store is empty" in text and "readyz check passed" in text
            async with plain.get(box.metrics_url + "/metrics") as resp:
                metrics = await resp.text()
        assert "apiproxy_trusted_clusters 0.0" in metrics, [
            line for line in metrics.splitlines() if "trusted" in line
        ]
    finally:
        await box.stop()
