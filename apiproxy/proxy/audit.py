"""One structured record per request: who, what, which decision, and how it ended.

Records go to stdout (or a file) as one JSON object per line, written when the request ends (for a watch:
when the stream closes). Tokens never appear: the record holds the authenticated principal, not the
credential, and the request target is the one forwarded (query parameters not forwarded are gone). A target
that was never classified (a refused caller, a malformed path) keeps its path and its parameter names, but
only the values of parameters kube-apiserver reads for its own requests: anything else, such as
``access_token=…``, is recorded as ``REDACTED``.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from apiproxy.auth.principal import Principal
from apiproxy.policy.requestinfo import FORWARDED_PARAMS, RequestInfo

_AUDIT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _RandomIds:
    """Random (version 4) UUIDs from the OS's CSPRNG, read 4 KiB at a time: one ``getrandom`` call per
    256 IDs instead of one per request, and formatted directly (``uuid.uuid4()`` costs several times more).
    """

    __slots__ = ("_pool", "_used")

    def __init__(self) -> None:
        self._pool = b""
        self._used = 0

    def next(self) -> str:
        if self._used >= len(self._pool):
            self._pool = os.urandom(4096)
            self._used = 0
        i = self._used
        self._used = i + 16
        x = self._pool[i : i + 16].hex()
        # Version nibble 4; variant bits 10xx.
        return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_random_ids = _RandomIds()


def audit_id(incoming: str | None) -> str:
    """The client's ``Audit-ID`` if well-formed (one ID follows the request end to end), else a new one."""
    if incoming and _AUDIT_ID.fullmatch(incoming):
        return incoming
    return _random_ids.next()


class _Clock:
    """RFC 3339 timestamps with milliseconds; the date-and-second part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((wall - second) * 1000):03d}+00:00"


_clock = _Clock()


@dataclass(slots=True)
class Exchange:
    """What the pipeline learned about one request, filled in as it goes."""

    method: str
    target: str
    source: str
    audit_id: str
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    principal: Principal | None = None
    info: RequestInfo | None = None
    decision: str = "error"  # allow | conceal | deny | unauthenticated | invalid | limited | error
    rule: str | None = None
    reason: str | None = None
    status: int = 0
    bytes: int = 0
    first_byte: float | None = None  # seconds from start to response headers
    forwarded: str | None = None  # the target sent upstream, when the proxy adjusted it (watch timeouts)

    def record(self) -> dict[str, Any]:
        info = self.info
        entry: dict[str, Any] = {
            "time": _clock.format(self.wall),
            "auditID": self.audit_id,
            "source": self.source,
            "cluster": self.principal.display if self.principal else None,
            "clusterUUID": self.principal.cluster_uuid if self.principal else None,
            "auth": self.principal.method if self.principal else None,
            "method": self.method or None,  # none for a request that could not be read
        }
        if info is None:
            entry["target"] = safe_target(self.target, 512) if self.target else None
        elif info.is_resource_request:
            entry.update(
                verb=info.verb,
                group=info.api_group,
                version=info.api_version,
                resource=info.resource_path,
                namespace=info.namespace or None,
                name=info.name or None,
                target=self.forwarded or info.forward_target,
            )
        else:
            entry.update(verb=info.verb, url=info.path, target=info.forward_target)
        entry.update(
            decision=self.decision,
            rule=self.rule,
            reason=self.reason,
            status=self.status,
            bytes=self.bytes,
            durationMs=round((time.perf_counter() - self.started) * 1000, 3),
        )
        return entry


#: Query parameters whose values are kept in logs and audit records: those the proxy forwards for some
#: verb (selectors, resource versions, limits, timeouts...), none of which can carry a credential.
SAFE_PARAMS: frozenset[str] = frozenset().union(*FORWARDED_PARAMS.values())
REDACTED = "REDACTED"
_PARAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def safe_target(target: str, limit: int = 200) -> str:
    """A request target fit for a log line or an audit record, whatever the caller sent.

    The path is kept; in the query, the value of every parameter not in :data:`SAFE_PARAMS` becomes
    ``REDACTED`` (``?access_token=…`` → ``?access_token=REDACTED``), and a pair that does not look like
    ``name=value`` with a plain name (a bare value, odd characters in the name) is replaced whole. Then
    the text is bounded, and control and non-ASCII characters are escaped, so a hostile target cannot
    forge log lines.
    """
    path, question, query = target.partition("?")
    if question:
        kept = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            if name in SAFE_PARAMS:
                kept.append(pair)
            elif equals and _PARAM_NAME.fullmatch(name):
                kept.append(f"{name}={REDACTED}")
            else:
                kept.append(REDACTED)
        target = f"{path}?{'&'.join(kept)}"
    return escaped(target, limit)


def escaped(text: str, limit: int = 200) -> str:
    """``text`` bounded to ``limit`` characters, with control and non-ASCII characters escaped."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")


#: One encoder for every record (``json.dumps`` with options builds a new one per call). ASCII-only output:
#: a hostile target cannot put raw control or non-ASCII bytes into a log line.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class AuditLog:
    """Writes records as JSON lines, in batches: lines are held until ``batch_lines`` accumulate or the
    proxy flushes (on every reload tick, about once a second, and at exit)."""

    def __init__(self, stream: IO[str] | IO[bytes] | None = None, *, batch_lines: int = 256) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._pending: list[str] = []
        self._batch_lines = batch_lines

    @classmethod
    def open(cls, target: str) -> AuditLog | None:
        """``-`` is stdout, empty disables auditing, anything else is a file appended to."""
        if not target:
            return None
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "ab", buffering=1 << 16))

    def write(self, exchange: Exchange) -> None:
        pending = self._pending
        pending.append(_encode(exchange.record()))
        if len(pending) >= self._batch_lines:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            if isinstance(self.stream, io.TextIOBase):
                self.stream.write(text)
            else:
                self.stream.write(text.encode("ascii"))  # type: ignore[arg-type]
        self.stream.flush()
