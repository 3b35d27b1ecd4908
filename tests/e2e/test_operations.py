"""Operating the proxy: metrics, audit records, limits, certificate rotation, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from apiproxy.certs import make_ca, write_serving_bundle
from apiproxy.demo.sandbox import Sandbox
from apiproxy.proxy.settings import to_args
from tests.helpers import KUBECTL, eventually, kubectl

PROMTOOL = shutil.which("promtool")


def need(tool: str | None, name: str) -> None:
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (make test installs it)")
        pytest.skip(f"{name} is not installed")


def session(box: Sandbox, token: str | None = None) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=box.client_ssl()), headers=headers)


async def get(box: Sandbox, path: str, token: str | None) -> int:
    async with session(box, token) as s, s.get(box.proxy_url + path) as resp:
        await resp.read()
        return resp.status


async def scrape(box: Sandbox) -> str:
    async with aiohttp.ClientSession() as s, s.get(box.metrics_url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in an exposition, 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


async def mixed_workload(box: Sandbox) -> None:
    alpha = box.clusters["alpha"].token
    assert await get(box, "/api/v1/pods?limit=5", alpha) == 200
    assert await get(box, "/api/v1/namespaces/istio-system/serviceaccounts", alpha) == 403
    assert await get(box, "/api/v1/pods", "not.a.token") == 401
    assert await get(box, "/api/v1/pods?watch=maybe", alpha) == 400
    watch = "/api/v1/namespaces?watch=true&timeoutSeconds=1"
    async with session(box, alpha) as s, s.get(box.proxy_url + watch) as resp:
        assert resp.status == 200
        await resp.read()


async def test_metrics_after_a_mixed_workload(sandbox: Sandbox, tmp_path: Path) -> None:
    await mixed_workload(sandbox)
    text = await scrape(sandbox)
    assert (
        sample(text, "apiproxy_requests_total", cluster="alpha", verb="list", resource="pods", code="200")
        == 1
    )
    # No rule names serviceaccounts: denied requests for them are counted under "other", keeping labels
    # bounded.
    assert (
        sample(text, "apiproxy_requests_total", cluster="alpha", verb="list", resource="other", code="403")
        == 1
    )
    assert sample(text, "apiproxy_authentication_failures_total", reason="malformed") == 1
    assert sample(text, "apiproxy_authorization_denials_total", cluster="alpha", reason="policy") == 1
    assert sample(text, "apiproxy_authorization_denials_total", cluster="alpha", reason="malformed") == 1
    assert sample(text, "apiproxy_requests_total", cluster="alpha", verb="watch", resource="namespaces") == 1
    assert sample(text, "apiproxy_watch_duration_seconds_count", resource="namespaces") == 1
    assert sample(text, "apiproxy_watches_active", cluster="alpha", resource="namespaces") == 0
    assert sample(text, "apiproxy_response_bytes_total", cluster="alpha", resource="pods") > 0
    assert sample(text, "apiproxy_trusted_clusters") == 2
    assert sample(text, "apiproxy_certificate_expiry_timestamp_seconds", cert="serving") > 0
    assert 0 <= sample(text, "apiproxy_upstream_token_age_seconds") < 3600
    assert sample(text, "apiproxy_policy_reloads_total", result="success") == 1
    # No request-specific strings ever become labels.
    assert "istio-system" not in text and "/api/v1" not in text
    need(PROMTOOL, "promtool")
    exposition = tmp_path / "metrics.txt"
    exposition.write_text(text)
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


async def test_audit_records_each_outcome_and_never_a_token(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    await mixed_workload(sandbox)
    records = sandbox.audit_records()
    by_status = {r["status"]: r for r in records}
    assert by_status[200]["decision"] == "allow" and by_status[200]["rule"] == "service-registry-core"
    assert by_status[200]["cluster"] == "alpha" and by_status[200]["auth"] == "jwt"
    assert by_status[403]["decision"] == "deny" and by_status[403]["namespace"] == "istio-system"
    assert by_status[401]["decision"] == "unauthenticated" and by_status[401]["cluster"] is None
    assert by_status[400]["decision"] == "invalid"
    watch = next(r for r in records if r.get("verb") == "watch")
    assert watch["resource"] == "namespaces" and watch["bytes"] > 0
    for record in records:
        assert {"time", "auditID", "source", "status", "durationMs", "decision"} <= set(record)
    everything = sandbox.audit_file.read_text() + "".join(capsys.readouterr())
    for cluster in sandbox.clusters.values():
        assert cluster.token not in everything
        assert cluster.token.split(".")[2] not in everything
    assert sandbox.upstream_token not in everything


async def test_audit_id_is_propagated_or_set(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None
    async with session(sandbox, sandbox.clusters["alpha"].token) as s:
        async with s.get(sandbox.proxy_url + "/api/v1/nodes", headers={"Audit-ID": "trace-123"}) as resp:
            assert resp.headers["Audit-Id"] == "trace-123"
        async with s.get(sandbox.proxy_url + "/api/v1/serviceaccounts") as resp:
            assert resp.status == 403
            generated = resp.headers["Audit-Id"]
    assert sandbox.simulator.requests[-1].headers["Audit-ID"] == "trace-123"
    assert any(r["auditID"] == generated and r["status"] == 403 for r in sandbox.audit_records())


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(
        tmp_path, settings={"rate_limit_qps": 1.0, "rate_limit_burst": 5, "max_watches_per_cluster": 2}
    )
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


async def test_a_hammering_cluster_gets_429_and_another_is_unaffected(limited: Sandbox) -> None:
    alpha, beta = limited.clusters["alpha"].token, limited.clusters["beta"].token
    async with session(limited, alpha) as s:
        codes = []
        for _ in range(8):
            async with s.get(limited.proxy_url + "/api/v1/nodes") as resp:
                codes.append(resp.status)
                if resp.status == 429:
                    body = await resp.json()
                    retry_after = resp.headers["Retry-After"]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] >= 1
    assert int(retry_after) >= 1
    assert await get(limited, "/api/v1/nodes", beta) == 200
    text = await scrape(limited)
    assert sample(text, "apiproxy_rate_limited_total", cluster="alpha", kind="rate") == 3
    assert sample(text, "apiproxy_rate_limited_total", cluster="beta", kind="rate") == 0


async def test_watch_cap_is_per_cluster(limited: Sandbox) -> None:
    alpha, beta = limited.clusters["alpha"].token, limited.clusters["beta"].token
    url = limited.proxy_url + "/api/v1/namespaces?watch=true"
    async with session(limited, alpha) as a, session(limited, beta) as b:
        open_watches = [await a.get(url), await a.get(url)]
        assert [r.status for r in open_watches] == [200, 200]
        async with a.get(url) as third:
            assert third.status == 429
            assert (await third.json())["details"]["retryAfterSeconds"] > 0
        async with b.get(url) as other:
            assert other.status == 200
        open_watches[0].close()
        assert limited.proxy is not None
        handler = limited.proxy.handler
        await eventually(lambda: handler.watch_slots.count("alpha") == 1)
        async with a.get(url) as again:
            assert again.status == 200
        for r in open_watches:
            r.close()


@pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")
async def test_serving_certificate_rotation_is_seen_by_a_new_kubectl_connection(sandbox: Sandbox) -> None:
    new_ca = make_ca("rotated serving CA")
    rotated = write_serving_bundle(sandbox.workdir / "rotated", "apiproxy", ca=new_ca)
    old_config = sandbox.kubeconfig()
    assert (await kubectl(old_config, "get", "nodes")).returncode == 0
    # Replace cert and key the way kubelet updates a Secret volume: new files renamed into place.
    for src, dst in (
        (rotated.cert_file, sandbox.serving.cert_file),
        (rotated.key_file, sandbox.serving.key_file),
    ):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        tmp.replace(dst)
    shutil.copy(rotated.ca_file, sandbox.serving.ca_file)
    new_config = sandbox.kubeconfig(name="after-rotation")

    async def new_cert_served() -> bool:
        return (await kubectl(new_config, "get", "nodes")).returncode == 0

    await eventually(new_cert_served)
    stale = await kubectl(old_config, "get", "nodes")
    assert stale.returncode != 0 and "certificate" in stale.stderr


async def test_sigterm_ends_open_watches_and_exits_within_the_grace_period(sandbox: Sandbox) -> None:
    """The proxy as its own process, as in production; the simulator stays in this test's loop."""
    from benchmarks.procs import free_port

    port, metrics = free_port(), free_port()
    sandbox.settings = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}",
                        "shutdown_delay": 0.5, "shutdown_grace": 10.0, "audit_log": ""}  # fmt: skip
    args = to_args(sandbox.proxy_settings())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "serve", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    ctx = sandbox.client_ssl()
    headers = {"Authorization": f"Bearer {sandbox.clusters['alpha'].token}"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=headers) as s:

            async def ready() -> bool:
                try:
                    async with s.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=20)
            watches = [await s.get(base + "/api/v1/namespaces?watch=true") for _ in range(3)]
            for w in watches:
                assert w.status == 200
                await asyncio.wait_for(w.content.readline(), 5)  # ADDED events are flowing
            proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                async with (
                    aiohttp.ClientSession() as plain,
                    plain.get(f"http://127.0.0.1:{metrics}/readyz") as r,
                ):
                    return r.status == 503

            await eventually(not_ready, timeout=5)  # well before the watches end
            for w in watches:
                rest = await asyncio.wait_for(w.content.read(), 15)  # the stream ends, cleanly
                assert isinstance(rest, bytes)
                w.close()
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert sandbox.clusters["alpha"].token not in log


def test_proxy_refuses_to_start_with_a_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "apiproxy.yaml"
    config.write_text("listen: 127.0.0.1:0\nrate-limit-qps: fast\n")
    result = subprocess.run(
        [sys.executable, "-m", "apiproxy", "serve", "--config", str(config)], capture_output=True, check=False
    )
    assert result.returncode == 2
    assert "rate-limit-qps" in result.stderr.decode()


def test_client_ssl_context_is_used(sandbox: Sandbox) -> None:
    assert isinstance(sandbox.client_ssl(), ssl.SSLContext)


async def test_a_refused_policy_shows_in_metrics_until_a_good_one_loads(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    good = sandbox.policy.read_text()
    policy.write_text(good)
    sandbox.policy = policy
    await sandbox.stop()
    await sandbox.start()

    async def gauge() -> float:
        return sample(await scrape(sandbox), "apiproxy_config_last_reload_successful", config="policy")

    assert await gauge() == 1
    policy.write_text(
        good + "\n  - clusters: ['*']\n    verbs: [delete]\n    apiGroups: ['']\n    resources: [pods]\n"
    )

    async def refused() -> bool:
        return await gauge() == 0

    await eventually(refused)
    text = await scrape(sandbox)
    assert sample(text, "apiproxy_policy_reloads_total", result="failure") == 1
    assert await get(sandbox, "/api/v1/nodes", sandbox.clusters["alpha"].token) == 200  # the old one serves
    policy.write_text(good.replace("# ", "#  "))

    async def recovered() -> bool:
        return await gauge() == 1

    await eventually(recovered)
