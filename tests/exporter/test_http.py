"""The exporter's HTTP behaviour, from file sources: tokens, ETags, errors, headers, metrics, audit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from apiproxy.exporter.main import RunningExporter
from tests.exporter import cluster as c
from tests.exporter.conftest import Start, audit_records
from tests.helpers import eventually as _eventually


async def eventually(probe: Any, *, timeout: float = 30.0) -> Any:
    """A deadline generous enough for a loaded machine; passing tests never wait for it."""
    return await _eventually(probe, timeout=timeout)


PUBLIC = "/metadata/public/public.json"
SPIFFE = "/metadata/public/spiffe-bundle-endpoint"
MULTICLUSTER = "/metadata/private/multicluster.json"
FEDERATION = "/metadata/private/federation.json"
SCOPES = {MULTICLUSTER: "private-multicluster", FEDERATION: "private-federation"}
OTHER_SCOPE = {MULTICLUSTER: "private-federation", FEDERATION: "private-multicluster"}


@pytest.fixture
async def exporter(start: Start, source_files: dict[str, Path]) -> RunningExporter:
    running = await start(**source_files)
    assert not running.state.not_ready()
    return running


async def get(
    http: aiohttp.ClientSession, exporter: RunningExporter, path: str, method: str = "GET", **headers: str
) -> tuple[int, bytes, Any]:
    url = URL(f"http://127.0.0.1:{exporter.port}{path}", encoded=True)  # sent as written, no normalising
    async with http.request(method, url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers.copy()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def failures(exporter: RunningExporter, path: str, reason: str) -> float:
    document = "multicluster" if path == MULTICLUSTER else "federation"
    value: float = exporter.metrics.auth_failures.labels(document, reason)._value.get()
    return value


@pytest.mark.parametrize("path", [MULTICLUSTER, FEDERATION])
async def test_valid_token_of_the_path_scope_reads_the_document(
    http: aiohttp.ClientSession, exporter: RunningExporter, path: str, tmp_path: Path
) -> None:
    status, body, headers = await get(http, exporter, path, **bearer(c.token(scope=SCOPES[path])))
    assert status == 200
    doc = json.loads(body)
    assert doc["ingressGateways"] == [{"address": "198.51.100.7", "port": 15443}]
    assert headers["Cache-Control"] == "private, no-cache"
    record = audit_records(tmp_path)[-1]
    assert record["peer"] == c.ALPHA and record["decision"] == "allow" and record["code"] == 200


def _bad_tokens(path: str) -> list[tuple[str, str, str]]:
    now = time.time()
    scope = SCOPES[path]
    return [
        ("wrong scope (the other document's)", c.token(scope=OTHER_SCOPE[path]), "bad_scope"),
        ("wrong scope (the API's)", c.token(scope="api"), "bad_scope"),
        ("no scope", c.token(scope=None), "bad_scope"),
        ("wrong aud", c.token(scope=scope, aud=c.BETA), "bad_audience"),
        ("unknown sub", c.token(scope=scope, sub="9a9a9a9a-0000-4000-8000-000000000000"), "unknown_cluster"),
        ("forged (alpha's sub, beta's key)", c.token(c.BETA_KEY, scope=scope), "bad_signature"),
        ("expired", c.token(scope=scope, now=now - 7200, ttl=3600), "expired"),
        ("expired beyond the leeway", c.token(scope=scope, now=now - 180, ttl=60), "expired"),
        ("not yet valid", c.token(scope=scope, now=now + 3600), "not_yet_valid"),
        ("alg none", c.unsigned_token("none", scope), "bad_algorithm"),
        ("HS256 keyed with the public key", c.unsigned_token("HS256", scope), "bad_algorithm"),
        ("missing iss", c.token_without_iss(scope), "missing_claim"),
        ("garbage", "not-a-jwt", "malformed"),
    ]


@pytest.mark.parametrize("path", [MULTICLUSTER, FEDERATION])
async def test_every_bad_token_is_401_naming_the_check_never_the_token(
    http: aiohttp.ClientSession, exporter: RunningExporter, path: str, tmp_path: Path
) -> None:
    for case, token, reason in _bad_tokens(path):
        before = failures(exporter, path, reason)
        status, body, headers = await get(http, exporter, path, **bearer(token))
        assert status == 401, case
        error = json.loads(body)
        assert error["reason"] == reason, case
        assert token.encode() not in body and token.split(".")[0].encode() not in body, case
        assert "ingressGateways" not in error
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert failures(exporter, path, reason) == before + 1, case
    denials = [r for r in audit_records(tmp_path) if r["decision"] == "deny"]
    assert len(denials) == len(_bad_tokens(path))
    assert all(r["peer"] is None for r in denials)


async def test_clock_skew_within_the_leeway_is_tolerated_on_nbf_and_exp(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    """A one-minute token from a peer whose clock is 30 s ahead, and one from a peer 90 s behind."""
    ahead = c.token(scope="private-multicluster", now=time.time() + 30, ttl=60)
    behind = c.token(scope="private-multicluster", now=time.time() - 90, ttl=60)
    for token in (ahead, behind):
        assert (await get(http, exporter, MULTICLUSTER, **bearer(token)))[0] == 200


async def test_deckhouse_peer_token_is_accepted_for_its_scope_only(
    http: aiohttp.ClientSession, start: Start, source_files: dict[str, Path]
) -> None:
    """alpha-private-scope.jwt: EdDSA, iss d8-istio, aud = the local UUID, scope private-multicluster.
    The samples live ten years, so the lifetime cap is off here (the default 400 days refuses them)."""
    exporter = await start(**source_files, jwt_max_lifetime=0)
    token = (c.DECKHOUSE / "alpha-private-scope.jwt").read_text().strip()
    assert (await get(http, exporter, MULTICLUSTER, **bearer(token)))[0] == 200
    status, body, _ = await get(http, exporter, FEDERATION, **bearer(token))
    assert status == 401 and json.loads(body)["reason"] == "bad_scope"
    for name, reason in (
        ("alpha-api.jwt", "bad_scope"),
        ("alpha-expired.jwt", "expired"),
        ("alpha-forged-by-beta.jwt", "bad_signature"),
    ):
        fixture = (c.DECKHOUSE / name).read_text().strip()
        status, body, _ = await get(http, exporter, MULTICLUSTER, **bearer(fixture))
        assert (status, json.loads(body)["reason"]) == (401, reason), name


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "malformed"),
        ({"Authorization": "Bearer "}, "missing"),
        ({"Authorization": "Bearer " + "A" * 9000}, "token_too_large"),
        ({"Authorization": "Bearer a.b.c"}, "malformed"),
    ],
)
async def test_missing_malformed_or_oversized_authorization_is_401_and_echoes_nothing(
    http: aiohttp.ClientSession, exporter: RunningExporter, headers: dict[str, str], reason: str
) -> None:
    status, body, _ = await get(http, exporter, MULTICLUSTER, **headers)
    assert status == 401
    assert json.loads(body)["reason"] == reason
    for value in headers.values():
        assert value.split(" ")[-1].encode() not in body or not value.split(" ")[-1]


async def test_etag_and_if_none_match(http: aiohttp.ClientSession, exporter: RunningExporter) -> None:
    status, body, headers = await get(http, exporter, PUBLIC)
    etag = headers["ETag"]
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    status, body, headers = await get(http, exporter, PUBLIC, **{"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    status, _, _ = await get(http, exporter, PUBLIC, **{"If-None-Match": f'"other", W/{etag}'})
    assert status == 304
    status, _, _ = await get(http, exporter, PUBLIC, **{"If-None-Match": '"other"'})
    assert status == 200
    assert exporter.metrics.requests.labels("public", "304")._value.get() == 2

    token = c.token(scope="private-multicluster")
    _, _, headers = await get(http, exporter, MULTICLUSTER, **bearer(token))
    private_etag = headers["ETag"]
    status, _, _ = await get(http, exporter, MULTICLUSTER, **bearer(token), **{"If-None-Match": private_etag})
    assert status == 304
    # A 304 is never a way around the token check.
    status, _, _ = await get(http, exporter, MULTICLUSTER, **{"If-None-Match": private_etag})
    assert status == 401


async def test_a_changed_file_changes_the_document_and_its_etag(
    http: aiohttp.ClientSession, exporter: RunningExporter, source_files: dict[str, Path]
) -> None:
    _, _, headers = await get(http, exporter, PUBLIC)
    renders = exporter.metrics.renders._value.get()
    for _ in range(5):  # requests do not render
        await get(http, exporter, PUBLIC)
    assert exporter.metrics.renders._value.get() == renders
    replacement = source_files["root_ca_file"].with_suffix(".new")
    replacement.write_text(c.ROOT_RSA)
    replacement.replace(source_files["root_ca_file"])

    async def rotated() -> bool:
        status, body, new = await get(http, exporter, PUBLIC, **{"If-None-Match": headers["ETag"]})
        return status == 200 and json.loads(body)["rootCA"] == c.ROOT_RSA and new["ETag"] != headers["ETag"]

    await eventually(rotated)
    assert exporter.metrics.renders._value.get() == renders + 1


async def test_broken_file_keeps_the_last_good_document(
    http: aiohttp.ClientSession, exporter: RunningExporter, source_files: dict[str, Path]
) -> None:
    _, before, _ = await get(http, exporter, MULTICLUSTER, **bearer(c.token()))
    _, public_before, _ = await get(http, exporter, PUBLIC)
    renders = exporter.metrics.renders._value.get()
    source_files["ingress_gateways_file"].write_text('[{"address": "x", "port": "443"}]')
    source_files["root_ca_file"].write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for source in ("ingress_gateways_file", "root_ca"):
        errors = exporter.metrics.source_errors.labels(source)
        await eventually(lambda errors=errors: errors._value.get() == 1)
    _, after, _ = await get(http, exporter, MULTICLUSTER, **bearer(c.token()))
    assert after == before
    assert (await get(http, exporter, PUBLIC))[1] == public_before
    assert exporter.metrics.renders._value.get() == renders


async def test_unknown_paths_404_other_methods_405(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    for path in (
        "/",
        "/metadata/public/",
        "/metadata/public/public.json/",
        "/metadata/private/../public/public.json",
        "/metrics",
        "/metadata/public/public.json;x",
    ):
        status, body, _ = await get(http, exporter, path)
        assert status == 404, path
        assert json.loads(body)["error"] == "not_found"
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in (PUBLIC, MULTICLUSTER):
            status, _, headers = await get(http, exporter, path, method)
            assert status == 405 and headers["Allow"] == "GET, HEAD", (method, path)
    status, body, headers = await get(http, exporter, PUBLIC, "HEAD")
    assert status == 200 and body == b"" and headers["ETag"]


async def test_no_server_header_with_versions_on_either_port(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    for url in (
        f"http://127.0.0.1:{exporter.port}{PUBLIC}",
        f"http://127.0.0.1:{exporter.port}/nope",
        f"http://127.0.0.1:{exporter.port}/healthz",
        f"http://127.0.0.1:{exporter.metrics_port}/metrics",
        f"http://127.0.0.1:{exporter.metrics_port}/nope",
    ):
        async with http.get(url) as resp:
            server = resp.headers.get("Server", "")
            assert "aiohttp" not in server and "Python" not in server and "/" not in server, url
            assert "Server" not in resp.headers, (url, server)


async def test_every_fixed_label_starts_at_zero(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    async with http.get(f"http://127.0.0.1:{exporter.metrics_port}/metrics") as resp:
        text = await resp.text()
    for document in ("public", "spiffe_bundle", "multicluster", "federation", "healthz", "readyz", "other"):
        for code in ("200", "304", "401", "404", "405", "503"):
            assert f'apiproxy_exporter_requests_total{{code="{code}",document="{document}"}}' in text
    for reason in (
        "bad_scope",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "bad_audience",
        "unknown_cluster",
    ):
        assert f'apiproxy_exporter_auth_failures_total{{document="federation",reason="{reason}"}} 0.0' in text
    for source in ("authn_key", "root_ca", "trust", "ingress_gateways_file"):
        assert f'apiproxy_exporter_source_ready{{source="{source}"}} 1.0' in text
    assert "apiproxy_exporter_ingress_gateways 1.0" in text


async def test_public_documents_are_503_naming_the_missing_file(
    start: Start, source_files: dict[str, Path], http: aiohttp.ClientSession
) -> None:
    source_files["root_ca_file"].unlink()
    exporter = await start(**source_files)
    status, body, _ = await get(http, exporter, PUBLIC)
    assert status == 503
    missing = json.loads(body)["missing"]
    assert len(missing) == 1 and missing[0].startswith("rootCA: cannot read root_ca file")
    status, body, _ = await get(http, exporter, "/readyz")
    assert status == 503 and b"root_ca" in body


async def _raw(exporter: RunningExporter, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(("size", "status"), [(20_000, b"401"), (100_000, b"431")])
async def test_huge_authorization_is_refused_without_echo_in_the_answer_or_the_log(
    exporter: RunningExporter, caplog: pytest.LogCaptureFixture, size: int, status: bytes
) -> None:
    """Past aiohttp's header-line limit the parser refuses the request itself; its stock answer and
    log line would quote the start of the line (the token)."""
    secret = b"eyJhbGciOiJFZERTQSJ9.SECRETPAYLOAD"
    answer = await _raw(
        exporter,
        b"GET /metadata/private/multicluster.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + secret + b"A" * size + b"\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status
    assert b"SECRET" not in answer and b"AAAA" not in answer
    assert b"aiohttp" not in head and b"Python" not in head
    json.loads(body)
    assert not any(
        "SECRET" in r.getMessage() or (r.exc_text and "SECRET" in r.exc_text) for r in caplog.records
    )
    if status == b"431":
        assert exporter.metrics.requests.labels("other", "431")._value.get() == 1


async def test_request_lines_are_not_logged(
    http: aiohttp.ClientSession, exporter: RunningExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await get(http, exporter, "/probe-3f1c", **{"User-Agent": "agent-9d2e"})
    await get(http, exporter, MULTICLUSTER, **bearer("tok-77aa"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    for needle in ("probe-3f1c", "agent-9d2e", "tok-77aa"):
        assert needle not in text


async def test_metrics_exposition_is_promtool_clean(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    from tests.deploy.conftest import require_tool

    promtool = require_tool("promtool", "prometheus")
    async with http.get(f"http://127.0.0.1:{exporter.metrics_port}/metrics") as resp:
        exposition = await resp.read()
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(exposition), 30)
    assert proc.returncode == 0 and not out.strip(), out.decode()


async def test_default_lifetime_cap_refuses_a_ten_year_peer_token(
    http: aiohttp.ClientSession, exporter: RunningExporter
) -> None:
    token = (c.DECKHOUSE / "alpha-private-scope.jwt").read_text().strip()
    status, body, _ = await get(http, exporter, MULTICLUSTER, **bearer(token))
    assert (status, json.loads(body)["reason"]) == (401, "too_long_lived")
