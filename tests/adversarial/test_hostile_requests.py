"""Hostile requests over raw TLS sockets against the proxy in front of a recording upstream.

For every case: the upstream saw nothing, or exactly the request the policy allows (method, the target
:func:`classify` forwards, only allowlisted headers plus the proxy's own credentials and framing); the
client got a well-formed answer (a ``Status`` for every refusal, including those of aiohttp's parser, and
never a ``Server`` header); no request hidden in the bytes was answered; the
proxy still serves a normal request and ``/healthz`` afterwards.

A request the policy conceals is answered by the proxy itself (an empty list, a watch of bookmarks only, a
404) and nothing of it is forwarded: the one upstream request it may cause is the proxy's own
resourceVersion read, recognised by its exact shape (see :func:`is_own_version_read`); any other is a leak.
The recording upstream answers every Secret path with a Secret whose bytes no response may ever carry.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import pytest
import pytest_asyncio

from apiproxy.demo.sandbox import Sandbox
from apiproxy.policy.requestinfo import MalformedRequest, RequestInfo, classify
from apiproxy.proxy.settings import Settings
from tests.adversarial.corpus import CASES, Case, Concealed, Ctx
from tests.adversarial.rawhttp import (
    K8S_LIST,
    READ_DEADLINE,
    Closed,
    RawRequest,
    RawResponse,
    RawUpstream,
    answer_json,
    close_writer,
    read_all_responses,
    read_response,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Request headers the upstream may see: the allowlist, the proxy's own Authorization, transport framing.
ALLOWLIST = frozenset(
    h.lower()
    for h in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "User-Agent",
        "Content-Type",
        "Audit-ID",
        "If-None-Match",
        "If-Modified-Since",
    )
)
TRANSPORT = frozenset({"host", "content-length", "transfer-encoding"})
MAX_WATCH_TIMEOUT = Settings().max_watch_timeout
SENTINEL = b"GET /healthz HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n"

#: The read a concealed list or watch costs: the apiserver's current resourceVersion, with the proxy's token.
RESOURCE_VERSION_READ = "/api/v1/namespaces?limit=1"
#: What the recording upstream says the current resourceVersion is (its answer to that read).
UPSTREAM_RESOURCE_VERSION: str = json.loads(K8S_LIST)["metadata"]["resourceVersion"]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

#: A Secret as the upstream would serve it; none of these bytes may appear in any response.
SECRET_NAME = "canary-credentials"
SECRET_VALUE = b"canary-secret-value-5d1f"
SECRET_MARKS = (SECRET_NAME.encode(), SECRET_VALUE, base64.b64encode(SECRET_VALUE))
SECRET_LIST = json.dumps(
    {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": UPSTREAM_RESOURCE_VERSION},
        "items": [
            {
                "metadata": {"name": SECRET_NAME, "namespace": "kube-system"},
                "type": "Opaque",
                "data": {"token": base64.b64encode(SECRET_VALUE).decode()},
            }
        ],
    }
).encode()


async def answer_like_apiserver(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Secrets for any core Secret path (what a real apiserver would give the proxy's token if it were
    asked), the small list of :func:`answer_json` for anything else."""
    path = request.target.partition("?")[0]
    if not (path.startswith("/api/") and "secrets" in path.split("/")):
        return await answer_json(request, writer)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(SECRET_LIST)).encode() + b"\r\n\r\n" + SECRET_LIST
    )
    await writer.drain()
    return True


@dataclass
class Stats:
    tried: int = 0
    forwarded: int = 0
    concealed: int = 0
    own_version_reads: int = 0
    leaked: list[str] = field(default_factory=list)
    known_leaks: list[str] = field(default_factory=list)
    by_status: dict[int, int] = field(default_factory=dict)


STATS = Stats()


@dataclass
class Env:
    box: Sandbox
    upstream: RawUpstream
    canary: list[bytes]
    ctx: Ctx


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    box = Sandbox(tmp_path_factory.mktemp("adversarial"), settings={"rate_limit_qps": 0.0})
    upstream = RawUpstream(box.upstream_server_ssl(), behaviour=answer_like_apiserver)
    box.upstream = await upstream.start()
    box.upstream_ca = box.upstream_tls.ca_file
    # A key server named by jku/x5u headers: the proxy must never connect to it.
    canary: list[bytes] = []

    async def canary_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        canary.append(await reader.read(1024))
        writer.close()

    canary_server = await asyncio.start_server(canary_conn, "127.0.0.1", 0)
    canary_url = f"http://127.0.0.1:{canary_server.sockets[0].getsockname()[1]}"
    await box.start()
    try:
        yield Env(box, upstream, canary, Ctx(box, canary_url))
    finally:
        await box.stop()
        await upstream.stop()
        canary_server.close()
        await canary_server.wait_closed()


def sent_line(case: Case) -> tuple[str, str]:
    if case.raw is None:
        return case.method, case.target
    first = case.raw.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1").split(" ")
    return first[0], first[1] if len(first) > 1 else ""


def sent_headers(case: Case) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"accept": ["application/json"]}
    for name, _ in case.headers:
        out.setdefault(name.lower(), [])
        if name.lower() == "accept":
            out["accept"] = []
    for name, value in case.headers:
        out[name.lower()].append(value)
    return out


def is_own_version_read(env: Env, request: RawRequest) -> bool:
    """Whether ``request`` is the proxy's own resourceVersion read, not anything of a client's request.

    Its exact shape: ``GET /api/v1/namespaces?limit=1``, the proxy's token, ``Accept: application/json``,
    no body and no other header. A forwarded request always carries an ``Audit-ID`` (the client's or the
    proxy's), so a client asking for the same target is never taken for it.
    """
    return (
        request.method == "GET"
        and request.target == RESOURCE_VERSION_READ
        and request.version == "HTTP/1.1"
        and sorted(request.header_names()) == ["accept", "authorization", "host"]
        and request.values("Authorization") == [f"Bearer {env.box.upstream_token}"]
        and request.values("Accept") == ["application/json"]
        and request.body == b""
    )


def version_reads_allowed(case: Case, first: RawResponse | None, rest: list[RawResponse]) -> int:
    """How many of its own resourceVersion reads the proxy may have made: one per concealed list or watch
    it answered (fewer when its one-second cache already held the version)."""
    allowed = 0
    if case.conceal is not None and case.conceal.verb != "get" and first is not None:
        allowed += first.status == 200
    if case.hidden_conceal is not None and case.hidden_conceal.verb != "get":
        allowed += sum(r.status == 200 for r in rest[: case.extra_responses])
    return allowed


def split_own_reads(env: Env, case: Case, allowed: int) -> tuple[list[RawRequest], list[RawRequest]]:
    """(the proxy's own reads, up to ``allowed``; everything else the upstream saw, to be judged)."""
    own: list[RawRequest] = []
    others: list[RawRequest] = []
    for request in env.upstream.arrived:
        (own if len(own) < allowed and is_own_version_read(env, request) else others).append(request)
    return own, others


def check_concealed(answer: Concealed, response: RawResponse, target: str) -> None:
    """``response`` is the proxy's own answer for a concealed request (see :class:`Concealed`)."""
    assert response.complete, "a concealed answer must end cleanly"
    if answer.verb == "get":
        assert response.status == 404, (response.status, response.body[:300])
        status = response.status_json()
        assert status is not None, response.body[:300]
        assert status["reason"] == "NotFound"
        assert status["message"] == f'{answer.resource} "{answer.name}" not found'
        assert status["details"] == {"name": answer.name, "kind": answer.resource}
        return
    assert response.status == 200, (response.status, response.body[:300])
    assert response.header("Content-Type") == "application/json", response.header("Content-Type")
    if answer.verb == "list":
        assert json.loads(response.body) == {
            "kind": f"{answer.kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": UPSTREAM_RESOURCE_VERSION},
            "items": [],
        }, response.body[:300]
        return
    assert answer.verb == "watch", answer
    assert "chunked" in (response.header("Transfer-Encoding") or ""), response.headers
    query = dict(parse_qsl(target.partition("?")[2]))
    events = [json.loads(line) for line in response.body.splitlines() if line.strip()]
    if query.get("allowWatchBookmarks") != "true":
        assert events == [], "a concealed watch that allows no bookmarks has no event at all"
        return

    def bookmark(**annotations: str) -> dict[str, object]:
        meta: dict[str, object] = {"resourceVersion": UPSTREAM_RESOURCE_VERSION}
        if annotations:
            meta["annotations"] = annotations
        return {"type": "BOOKMARK", "object": {"kind": answer.kind, "apiVersion": "v1", "metadata": meta}}

    if query.get("sendInitialEvents") == "true":
        assert events[:1] == [bookmark(**{INITIAL_EVENTS_END: "true"})], events[:1]
        events = events[1:]
    assert all(event == bookmark() for event in events), events


def secret_bytes(response: RawResponse) -> bool:
    """Whether any byte of the upstream's Secret made it into ``response`` (head or body)."""
    blob = response.body + "\n".join(f"{k}: {v}" for k, v in response.headers).encode("latin-1")
    return any(mark in blob for mark in SECRET_MARKS)


def leak_problems(env: Env, case: Case, request: RawRequest) -> list[str]:
    """Why ``request`` (seen by the upstream) is not exactly what the policy allows for ``case``."""
    method, target = sent_line(case)
    problems: list[str] = []
    try:
        info = classify(method, target)
    except MalformedRequest as exc:
        return [
            f"upstream saw {request.method} {request.target!r} although classify refuses it: {exc.message}"
        ]
    alpha = env.box.clusters["alpha"]
    assert env.box.proxy is not None
    if not env.box.proxy.policy.current.decide(alpha.uuid, alpha.name, info).allowed:
        problems.append(f"policy denies {info.describe()} but the upstream saw it")
    if request.method != info.method:
        problems.append(f"method {request.method!r} != {info.method!r}")
    if request.target != info.forward_target and not _added_watch_timeout(info, request.target):
        problems.append(f"target {request.target!r} != forward_target {info.forward_target!r}")
    if request.version != "HTTP/1.1":
        problems.append(f"version {request.version!r}")
    names = request.header_names()
    extra = sorted(set(names) - ALLOWLIST - TRANSPORT - {"authorization"})
    if extra:
        problems.append(f"headers outside the allowlist reached upstream: {extra}")
    if request.values("Authorization") != [f"Bearer {env.box.upstream_token}"]:
        problems.append(f"Authorization upstream is {request.values('Authorization')!r}")
    sent = sent_headers(case)
    hop_by_hop = {t.strip().lower() for v in sent.get("connection", []) for t in v.split(",")}
    named = sorted(hop_by_hop & set(names))
    if named:
        problems.append(f"headers the client's Connection header names reached upstream: {named}")
    for name in ALLOWLIST:
        got = request.values(name)
        if name == "audit-id" and not sent.get(name) and len(got) == 1:
            continue  # the proxy gives requests without one its own Audit-ID
        if got and got != sent.get(name, []):
            problems.append(f"{name} upstream {got!r} != sent {sent.get(name)!r}")
    if method == "POST" and request.body != _sent_body(case):
        problems.append("body differs from the one sent")
    return problems


def _added_watch_timeout(info: RequestInfo, target: str) -> bool:
    """A watch without ``timeoutSeconds`` gets the proxy's own bound appended, nothing else."""
    if info.verb != "watch" or "timeoutSeconds=" in info.forward_target:
        return False
    sep = "&" if "?" in info.forward_target else "?"
    rest = target.removeprefix(info.forward_target + sep + "timeoutSeconds=")
    return rest != target and rest.isdigit() and 0 < int(rest) <= MAX_WATCH_TIMEOUT


def _sent_body(case: Case) -> bytes:
    if "chunked" in dict((k.lower(), v) for k, v in case.headers).get("transfer-encoding", ""):
        out, rest = b"", case.body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return out
            out, rest = out + rest[:size], rest[size + 2 :]
    length = dict((k.lower(), v) for k, v in case.headers).get("content-length")
    return case.body[: int(length)] if length else case.body


async def exchange(env: Env, data: bytes, *, head: bool) -> tuple[RawResponse | None, list[RawResponse]]:
    """Send ``data``, read the first response, then ask ``/healthz`` on the same connection; read to EOF."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", env.box.proxy.port if env.box.proxy else 0, ssl=env.box.client_ssl(), limit=1 << 20
    )
    first: RawResponse | None = None
    rest: list[RawResponse] = []
    try:
        writer.write(data)
        try:
            async with asyncio.timeout(READ_DEADLINE):
                first = await read_response(reader, head_request=head)
        except (Closed, ConnectionError, TimeoutError):
            return None, []
        try:
            writer.write(SENTINEL)
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return first, []
        rest = await read_all_responses(reader)
    finally:
        await close_writer(writer)
    return first, rest


async def normal_request(env: Env) -> RawResponse:
    token = env.box.clusters["alpha"].token
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", env.box.proxy.port if env.box.proxy else 0, ssl=env.box.client_ssl()
    )
    try:
        writer.write(
            f"GET /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(READ_DEADLINE):
            return await read_response(reader)
    finally:
        await close_writer(writer)


def _params() -> list[object]:
    return [pytest.param(case, id=case.id, marks=list(case.marks)) for case in CASES]  # type: ignore[arg-type]


@pytest.mark.parametrize("case", _params())
async def test_hostile_request(env: Env, case: Case) -> None:
    env.upstream.arrived.clear()
    STATS.tried += 1
    known = bool(case.marks)
    first, rest = await exchange(env, case.build(env.ctx), head=case.method == "HEAD")

    # Nothing reached upstream but what the policy allows, exactly, and the resourceVersion reads of
    # concealed answers; no Secret byte came back.
    own, from_clients = split_own_reads(env, case, version_reads_allowed(case, first, rest))
    STATS.own_version_reads += len(own)
    problems = [p for request in from_clients for p in leak_problems(env, case, request)]
    if problems:
        (STATS.known_leaks if known else STATS.leaked).append(case.id)
    assert not problems, problems
    assert env.canary == [], "the proxy contacted a key URL named by a token"
    assert not any(secret_bytes(r) for r in [*([first] if first else []), *rest]), "a Secret was answered"

    # A well-formed answer.
    assert first is not None, "no response"
    STATS.by_status[first.status] = STATS.by_status.get(first.status, 0) + 1
    assert first.status in case.expect, (first.status, first.body[:300])
    assert first.complete
    assert first.header("Server") is None, first.header("Server")
    if first.status >= 400:
        status = first.status_json()
        if case.method == "HEAD" and (first.header("Content-Type") or "").startswith("application/json"):
            pass  # a HEAD answer carries no body; its Content-Type says it is a Status
        else:
            assert status is not None, f"plain {first.status} {first.body[:200]!r}"
            assert status["code"] == first.status
            assert status["status"] == "Failure" and status["message"]

    if case.conceal is not None and first.status in (200, 404):
        STATS.concealed += 1
        check_concealed(case.conceal, first, case.target if case.raw is None else "")
    if case.forward and first.status == 200:
        STATS.forwarded += 1
        assert len(from_clients) == 1, [(r.method, r.target) for r in env.upstream.arrived]
        assert json.loads(first.body)["kind"] == "List"
    elif first.status == 200:
        assert case.conceal is not None, "a 200 for a request neither forwarded nor concealed"
        assert not from_clients, "a concealed request reached upstream"
    else:
        assert not env.upstream.arrived, "a refused request reached upstream"

    # No request hidden in the bytes was answered, but those pipelined on purpose; after them, only /healthz.
    extra = rest[: case.extra_responses]
    assert len(extra) == case.extra_responses, [(r.status, r.body[:300]) for r in rest]
    if case.hidden_conceal is None:
        assert all(r.status == 403 for r in extra), [r.status for r in extra]
    else:
        for response in extra:
            check_concealed(case.hidden_conceal, response, "")
    tail = rest[case.extra_responses :]
    assert len(tail) <= 1, [(r.status, r.body[:300]) for r in rest]
    if tail:
        assert tail[0].status == 200 and tail[0].body == b"ok", (tail[0].status, tail[0].body[:200])

    # Still healthy.
    env.upstream.arrived.clear()
    after = await normal_request(env)
    assert after.status == 200, after.body[:300]
    assert len(env.upstream.arrived) == 1


async def test_corpus_summary(env: Env) -> None:
    """Printed with ``-s``; fails if any case leaked that is not a known (xfail) finding."""
    summary = {
        "tried": STATS.tried,
        "forwarded_as_allowed": STATS.forwarded,
        "answered_concealed": STATS.concealed,
        "own_resource_version_reads": STATS.own_version_reads,
        "leaked_to_upstream": len(STATS.leaked),
        "leaked_known_findings": STATS.known_leaks,
        "first_status_counts": dict(sorted(STATS.by_status.items())),
    }
    print("\nadversarial corpus:", json.dumps(summary, indent=2))
    assert not STATS.leaked, STATS.leaked
