"""One structured record per request: who, what, which decision, and how it ended.

Records go to stdout (or a file) as one JSON object per line, written when the request ends (for a watch:
when the stream closes). Tokens never appear: the record holds the authenticated principal, not the
credential, and the request target is the one forwarded (query parameters not forwarded are gone).
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
from typing import Any, TextIO

from apiproxy.auth.principal import Principal
from apiproxy.requestinfo import RequestInfo

_AUDIT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def audit_id(incoming: str | None) -> str:
    """The client's ``Audit-ID`` if well-formed (one ID follows the request end to end), else a new one."""
    if incoming and _AUDIT_ID.fullmatch(incoming):
        return incoming
    # A random (version 4) UUID, formatted directly: uuid.uuid4() costs several times more.
    h = (int.from_bytes(os.urandom(16)) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    x = f"{h:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


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
    decision: str = "error"  # allow | deny | unauthenticated | invalid | limited | error
    rule: str | None = None
    reason: str | None = None
    status: int = 0
    bytes: int = 0
    first_byte: float | None = None  # seconds from start to response headers
    forwarded: str | None = None  # the target sent upstream, when the proxy adjusted it (watch timeouts)

    def record(self) -> dict[str, Any]:
        info = self.info
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(self.wall, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "auditID": self.audit_id,
            "source": self.source,
            "cluster": self.principal.display if self.principal else None,
            "clusterUUID": self.principal.cluster_uuid if self.principal else None,
            "auth": self.principal.method if self.principal else None,
            "method": self.method,
        }
        if info is None:
            entry["target"] = _bounded(self.target)
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


def _bounded(text: str, limit: int = 512) -> str:
    """Targets that were never classified may be hostile: cap them and escape control characters."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")


class AuditLog:
    """Writes records as JSON lines, in batches: the proxy flushes on every reload tick and at exit."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    @classmethod
    def open(cls, target: str) -> AuditLog | None:
        """``-`` is stdout, empty disables auditing, anything else is a file appended to."""
        if not target:
            return None
        if target == "-":
            return cls(sys.stdout)
        return cls(io.TextIOWrapper(open(target, "ab", buffering=1 << 16), encoding="utf-8"))

    def write(self, exchange: Exchange) -> None:
        self.stream.write(json.dumps(exchange.record(), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.stream.flush()
