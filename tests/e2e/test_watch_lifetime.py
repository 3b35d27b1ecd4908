"""A watch never outlives the token that opened it: the proxy bounds its timeout by the token's ``exp``,
so the client must come back (and authenticate again) before the token runs out. Without this an
expired, or stolen and expired, token keeps streaming until the watch's own timeout (kube-apiserver
behaves that way: it authenticates a watch once, when it starts)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp

from apiproxy.auth.mint import mint_token
from apiproxy.demo.sandbox import Sandbox
from tests.helpers import eventually


def forwarded_timeout(box: Sandbox, resource: str) -> int:
    [record] = [r for r in box.audit_records() if r.get("verb") == "watch" and r.get("resource") == resource]
    return int(parse_qs(urlsplit(record["target"]).query)["timeoutSeconds"][0])


async def watch_with(box: Sandbox, token: str, target: str) -> float:
    """Open a watch, read it to its end; returns how long it lasted."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(
            base_url=box.proxy_url,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(ssl=box.client_ssl()),
        ) as http,
        http.get(target) as resp,
    ):
        assert resp.status == 200, await resp.text()
        await asyncio.wait_for(resp.read(), 30)
    return time.monotonic() - started


async def test_a_watch_ends_when_its_token_expires(sandbox: Sandbox) -> None:
    alpha = sandbox.clusters["alpha"]
    short = mint_token(alpha.key, alpha.uuid, sandbox.local_uuid, ttl=3)
    lasted = await watch_with(
        sandbox, short, "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=600"
    )
    assert forwarded_timeout(sandbox, "services") <= 3
    assert lasted < 10
    await eventually(lambda: not sandbox.proxy.handler.watches if sandbox.proxy else False)


async def test_a_concealed_watch_ends_when_its_token_expires(sandbox: Sandbox) -> None:
    alpha = sandbox.clusters["alpha"]
    short = mint_token(alpha.key, alpha.uuid, sandbox.local_uuid, ttl=3)
    lasted = await watch_with(sandbox, short, "/api/v1/secrets?watch=true&timeoutSeconds=600")
    assert forwarded_timeout(sandbox, "secrets") <= 3
    assert lasted < 10


async def test_a_long_lived_token_keeps_the_requested_timeout(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    await box.start()
    try:
        await watch_with(
            box,
            box.clusters["alpha"].token,
            "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=2",
        )
        assert forwarded_timeout(box, "services") == 2
    finally:
        await box.stop()
