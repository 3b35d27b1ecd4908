"""The forwarder against an upstream whose every byte the test controls."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from apiproxy.demo.sandbox import Sandbox
from tests.e2e.scripted_upstream import ScriptedUpstream
from tests.helpers import eventually

PROTOBUF = "application/vnd.kubernetes.protobuf"
WATCH_EVENT = b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"}}}\n'


def client(box: Sandbox, token: str | None = None) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token or box.clusters['alpha'].token}"}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=box.client_ssl()), headers=headers, auto_decompress=False
    )


async def test_large_list_passes_byte_for_byte(scripted: tuple[ScriptedUpstream, Sandbox]) -> None:
    upstream, box = scripted
    chunk = os.urandom(1 << 20)
    chunks = 24
    expected = hashlib.sha256(chunk * chunks).hexdigest()

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(chunks):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    upstream.routes["/api/v1/pods"] = big
    digest = hashlib.sha256()
    async with client(box) as session, session.get(box.proxy_url + "/api/v1/pods?limit=500") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        async for piece in resp.content.iter_any():
            digest.update(piece)
    assert digest.hexdigest() == expected


async def test_protobuf_body_and_content_type_pass_unchanged(
    scripted: tuple[ScriptedUpstream, Sandbox],
) -> None:
    upstream, box = scripted
    body = b"k8s\x00" + bytes(range(256)) * 64 + b"\r\n\x00\xff"

    async def pod(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": PROTOBUF, "Content-Encoding": "identity"})

    upstream.routes["/api/v1/namespaces/default/pods/p"] = pod
    async with (
        client(box) as session,
        session.get(
            box.proxy_url + "/api/v1/namespaces/default/pods/p",
            headers={"Accept": f"{PROTOBUF},application/json"},
        ) as resp,
    ):
        assert await resp.read() == body
        assert resp.headers["Content-Type"] == PROTOBUF
        assert resp.headers["Content-Length"] == str(len(body))
    assert upstream.arrived[-1].headers["Accept"] == f"{PROTOBUF},application/json"


async def test_callers_credentials_and_identity_headers_never_reach_upstream(
    scripted: tuple[ScriptedUpstream, Sandbox],
) -> None:
    upstream, box = scripted

    async def version(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"gitVersion": "v1.30.0"})

    upstream.routes["/version"] = version
    smuggled = {
        "Impersonate-User": "system:admin",
        "impersonate-group": "system:masters",
        "IMPERSONATE-EXTRA-scopes": "x",
        "Impersonate-Uid": "0",
        "X-Remote-User": "admin",
        "x-remote-group": "system:masters",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Forwarded-For": "10.0.0.1",
        "Cookie": "session=1",
        "Audit-ID": "trace-me",
        "User-Agent": "pilot-discovery/1.22.0",
    }
    async with client(box) as session, session.get(box.proxy_url + "/version", headers=smuggled) as resp:
        assert resp.status == 200
        await resp.read()
    arrived = upstream.arrived[-1]
    assert arrived.target == "/version"
    assert arrived.headers.getall("Authorization") == [f"Bearer {box.upstream_token}"]
    names = {name.lower() for name in arrived.headers}
    assert not {n for n in names if n.startswith(("impersonate-", "x-remote-", "proxy-", "x-forwarded"))}
    assert "cookie" not in names
    assert arrived.headers["Audit-ID"] == "trace-me"
    assert arrived.headers["User-Agent"] == "pilot-discovery/1.22.0"


async def test_path_and_query_are_forwarded_exactly(scripted: tuple[ScriptedUpstream, Sandbox]) -> None:
    upstream, box = scripted

    async def pods(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"kind": "PodList", "items": []})

    upstream.routes["/api/v1/pods"] = pods
    target = "/api/v1/pods?fieldSelector=status.phase%21%3DFailed&limit=500&resourceVersion=0"
    async with (
        client(box) as session,
        session.get(
            URL(box.proxy_url + target, encoded=True), headers={"Accept": "application/json"}
        ) as resp,
    ):
        assert resp.status == 200
    assert upstream.arrived[-1].target == target


async def test_watch_headers_arrive_before_the_first_event_and_events_stream(
    scripted: tuple[ScriptedUpstream, Sandbox],
) -> None:
    upstream, box = scripted
    send = asyncio.Event()

    async def watch(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await send.wait()
        await resp.write(WATCH_EVENT)
        await resp.write(WATCH_EVENT.replace(b"ADDED", b"MODIFIED"))
        await resp.write_eof()
        return resp

    upstream.routes["/api/v1/namespaces/default/pods"] = watch
    async with (
        client(box) as session,
        session.get(
            box.proxy_url + "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true"
        ) as resp,
    ):
        # The upstream has sent nothing but headers yet: the client already has them.
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        send.set()
        first = await asyncio.wait_for(resp.content.readline(), 5)
        second = await asyncio.wait_for(resp.content.readline(), 5)
        rest = await asyncio.wait_for(resp.content.read(), 5)
    assert json.loads(first)["type"] == "ADDED"
    assert json.loads(second)["type"] == "MODIFIED"
    assert rest == b""  # upstream ended cleanly, so did the proxy


async def test_upstream_killed_mid_watch_ends_the_clients_stream(
    scripted: tuple[ScriptedUpstream, Sandbox],
) -> None:
    upstream, box = scripted
    kill = asyncio.Event()

    async def watch(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(WATCH_EVENT)
        await kill.wait()
        assert request.transport is not None
        request.transport.abort()
        return resp

    upstream.routes["/api/v1/pods"] = watch
    async with client(box) as session, session.get(box.proxy_url + "/api/v1/pods?watch=1") as resp:
        assert json.loads(await asyncio.wait_for(resp.content.readline(), 5))["type"] == "ADDED"
        kill.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.content.read(), 5)


async def test_client_disconnect_cancels_the_upstream_request(
    scripted: tuple[ScriptedUpstream, Sandbox],
) -> None:
    upstream, box = scripted
    upstream_gone = asyncio.Event()

    async def watch(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(WATCH_EVENT)
        try:
            await asyncio.Event().wait()  # an idle watch: nothing more to say
        except asyncio.CancelledError:
            upstream_gone.set()  # the proxy closed its upstream connection
            raise
        return resp

    upstream.routes["/api/v1/pods"] = watch
    session = client(box)
    resp = await session.get(box.proxy_url + "/api/v1/pods?watch=true")
    await asyncio.wait_for(resp.content.readline(), 5)
    assert box.proxy is not None and len(box.proxy.handler.watches) == 1
    resp.close()
    await session.close()
    await asyncio.wait_for(upstream_gone.wait(), 5)
    assert len(box.proxy.handler.watches) == 0


async def test_upstream_errors_pass_through_intact(scripted: tuple[ScriptedUpstream, Sandbox]) -> None:
    upstream, box = scripted
    gone = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": "too old resource version: 1 (2)",
        "reason": "Expired",
        "code": 410,
    }

    async def expired(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response(gone, status=410, headers={"Audit-Id": "a1"})

    upstream.routes["/api/v1/nodes"] = expired
    async with client(box) as session, session.get(box.proxy_url + "/api/v1/nodes") as resp:
        assert resp.status == 410
        assert await resp.json() == gone
        assert resp.headers["Audit-Id"] == "a1"


async def test_upstream_down_gives_a_503_status(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    upstream = ScriptedUpstream()
    box.upstream = await upstream.start(box.upstream_server_ssl())
    await upstream.stop()  # nothing listens there any more
    await box.start()
    try:
        async with client(box) as session, session.get(box.proxy_url + "/api/v1/pods") as resp:
            assert resp.status == 503
            status = await resp.json()
        assert status["kind"] == "Status"
        assert status["reason"] == "ServiceUnavailable"
        assert "unreachable" in status["message"]
        async with client(box) as session, session.get(box.proxy_url + "/readyz") as resp:
            assert resp.status == 503
            assert await resp.text() == "not ready\n"  # anyone can ask here: no details
        async with aiohttp.ClientSession() as plain, plain.get(box.metrics_url + "/readyz") as resp:
            assert resp.status == 503
            assert "upstream" in await resp.text()  # the in-cluster metrics port says why
    finally:
        await box.stop()


async def test_upstream_token_is_reread_when_it_rotates(scripted: tuple[ScriptedUpstream, Sandbox]) -> None:
    upstream, box = scripted

    async def version(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"gitVersion": "v1.30.0"})

    upstream.routes["/version"] = version
    rotated = box.workdir / "token.new"
    rotated.write_text("rotated-token")
    rotated.replace(box.upstream_token_file)  # atomic, as kubelet does

    async def upstream_saw_new_token() -> bool:
        async with client(box) as session, session.get(box.proxy_url + "/version") as resp:
            await resp.read()
        return upstream.arrived[-1].headers["Authorization"] == "Bearer rotated-token"

    await eventually(upstream_saw_new_token)
