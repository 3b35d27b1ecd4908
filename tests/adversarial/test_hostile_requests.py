"""Hostile requests over raw TLS sockets against the proxy in front of a recording upstream.

For every case: the upstream saw nothing, or exactly the request the policy allows (method, the target
:func:`classify` forwards, only allowlisted headers plus the proxy's own credentials and framing); the
client got a well-formed answer (a ``Status`` for every refusal, including those of aiohttp's parser, and
never a ``Server`` header); no request hidden in the bytes was answered; the
proxy still serves a normal request and ``/healthz`` afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from apiproxy.requestinfo import MalformedRequest, RequestInfo, classify
from apiproxy.sandbox import Sandbox
from apiproxy.settings import Settings
from tests.adversarial.corpus import CASES, Case, Ctx
from tests.adversarial.rawhttp import (
    READ_DEADLINE,
    Closed,
    RawRequest,
    RawResponse,
    RawUpstream,
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


@dataclass
class Stats:
    tried: int = 0
    forwarded: int = 0
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
    upstream = RawUpstream(box.upstream_server_ssl())
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

    # Nothing reached upstream but what the policy allows, exactly.
    problems = [p for request in env.upstream.arrived for p in leak_problems(env, case, request)]
    if problems:
        (STATS.known_leaks if known else STATS.leaked).append(case.id)
    assert not problems, problems
    assert env.canary == [], "the proxy contacted a key URL named by a token"

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

    if case.forward and first.status == 200:
        STATS.forwarded += 1
        assert len(env.upstream.arrived) == 1
        assert json.loads(first.body)["kind"] == "List"
    elif first.status != 200:
        assert not env.upstream.arrived, "a refused request reached upstream"

    # No request hidden in the bytes was answered: after the extra pipelined ones, only /healthz.
    extra = rest[: case.extra_responses]
    assert all(r.status == 403 for r in extra), [r.status for r in extra]
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
        "leaked_to_upstream": len(STATS.leaked),
        "leaked_known_findings": STATS.known_leaks,
        "first_status_counts": dict(sorted(STATS.by_status.items())),
    }
    print("\nadversarial corpus:", json.dumps(summary, indent=2))
    assert not STATS.leaked, STATS.leaked
