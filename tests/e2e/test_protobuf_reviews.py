"""Review POSTs with protobuf bodies, as a client-go clientset configured with ``ContentType:
application/vnd.kubernetes.protobuf`` sends them, through a running proxy.

The upstream is a scripted server that records the exact bytes it receives and answers 201 as
kube-apiserver does (the simulator decodes JSON only, and the proxy only has to forward the body it
checked, byte for byte). Refused bodies never reach the upstream and get a ``Status``.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from apiproxy import protowire as pw
from apiproxy.demo.sandbox import Sandbox
from tests.e2e.scripted_upstream import ScriptedUpstream

PROTOBUF = "application/vnd.kubernetes.protobuf"
CLIENT_GO = Path(__file__).resolve().parent.parent / "fixtures" / "client-go"
TR_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
RECORDED = {
    TR_PATH: (CLIENT_GO / "tokenreview-v1.pb").read_bytes(),
    SAR_PATH: (CLIENT_GO / "subjectaccessreview-v1.pb").read_bytes(),
}


def client(box: Sandbox) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {box.clusters['alpha'].token}"}
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=box.client_ssl()), headers=headers)


@pytest.mark.parametrize("path", [TR_PATH, SAR_PATH])
async def test_recorded_protobuf_review_is_forwarded_byte_for_byte(
    scripted: tuple[ScriptedUpstream, Sandbox], path: str
) -> None:
    upstream, box = scripted
    sent = RECORDED[path]
    unknown = pw.decode_unknown(sent)
    # The upstream's own answer: the same kind with a status filled in (field 2 of the object).
    reply = pw.encode_unknown(unknown.api_version, unknown.kind, unknown.raw + pw.length_delimited(2, b""))

    async def review(request: web.BaseRequest) -> web.StreamResponse:
        # As kube-apiserver answers: 201 and the review with its status, in the request's media type.
        return web.Response(status=201, body=reply, headers={"Content-Type": PROTOBUF})

    upstream.routes[path] = review
    async with (
        client(box) as session,
        session.post(
            box.proxy_url + path,
            data=sent,
            headers={"Content-Type": PROTOBUF, "Accept": f"{PROTOBUF}, application/json"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
        assert resp.headers["Content-Type"] == PROTOBUF
        assert await resp.read() == reply
    [arrived] = upstream.arrived
    assert (arrived.method, arrived.target) == ("POST", path)
    assert arrived.body == sent
    assert arrived.headers["Content-Type"] == PROTOBUF


@pytest.mark.parametrize(
    ("content_type", "body", "code", "words"),
    [
        ("application/yaml", b"apiVersion: authentication.k8s.io/v1\nkind: TokenReview\n", 415, "supported"),
        (PROTOBUF, RECORDED[SAR_PATH], 400, "apiVersion"),
        (PROTOBUF, pw.encode_unknown("authentication.k8s.io/v1", "Secret", b""), 400, "kind"),
        (PROTOBUF, RECORDED[TR_PATH] + b"\x12", 400, "truncated"),
        (PROTOBUF, b'{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview"}', 415, "JSON"),
        ("application/json", RECORDED[TR_PATH], 415, "protobuf"),
    ],
)
async def test_refused_review_bodies_never_reach_the_upstream(
    scripted: tuple[ScriptedUpstream, Sandbox], content_type: str, body: bytes, code: int, words: str
) -> None:
    upstream, box = scripted
    async with (
        client(box) as session,
        session.post(box.proxy_url + TR_PATH, data=body, headers={"Content-Type": content_type}) as resp,
    ):
        assert resp.status == code
        status = json.loads(await resp.read())
    assert (status["kind"], status["code"]) == ("Status", code)
    assert words in status["message"]
    assert upstream.arrived == []


async def test_the_simulator_refuses_protobuf_itself_after_the_proxy_let_it_through(tmp_path: Path) -> None:
    """With the JSON-only simulator behind it, the 415 a client sees is the upstream's, not the proxy's."""
    box = Sandbox(tmp_path)
    await box.start()
    try:
        async with (
            client(box) as session,
            session.post(
                box.proxy_url + TR_PATH, data=RECORDED[TR_PATH], headers={"Content-Type": PROTOBUF}
            ) as resp,
        ):
            assert resp.status == 415
            status = json.loads(await resp.read())
        assert status["reason"] == "UnsupportedMediaType"
        assert "unknown format" in status["message"]  # the simulator's words, as kube-apiserver's
        assert box.simulator is not None
        assert [r.raw_target for r in box.simulator.requests if r.method == "POST"] == [TR_PATH]
    finally:
        await box.stop()
