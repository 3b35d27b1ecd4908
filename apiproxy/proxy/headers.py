"""Which headers cross the proxy, in each direction.

Both directions are allowlists: anything not named here is dropped. The caller's credentials
(``Authorization``), identity assertions (``Impersonate-*``, ``X-Remote-*``), hop-by-hop headers and
whatever ``Connection:`` names never reach the apiserver, whatever their spelling, because they are simply
never copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from apiproxy.status import StatusError

#: Request headers copied to the apiserver (lower-case). Each may appear at most once.
FORWARDED_REQUEST_HEADERS: Final = frozenset(
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

#: Response headers copied back to the client. Framing (Content-Length, Transfer-Encoding) is set by the
#: proxy's own HTTP layer from what it actually sends.
FORWARDED_RESPONSE_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "Content-Encoding",
        "Audit-ID",
        "Cache-Control",
        "Warning",
        "Retry-After",
        "ETag",
        "Last-Modified",
        "Expires",
        "Vary",
        "X-Content-Type-Options",
        "X-Kubernetes-PF-FlowSchema-UID",
        "X-Kubernetes-PF-PriorityLevel-UID",
    )
)

#: Headers whose presence alone makes a request unacceptable: they ask for a protocol switch
#: (exec/attach/port-forward over SPDY or WebSocket) or carry a method override.
REFUSED_REQUEST_HEADERS: Final = frozenset(
    h.lower() for h in ("Upgrade", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
)


def upstream_request_headers(incoming: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Build the headers sent upstream from an allowlist of the caller's headers.

    Raises a 400 ``StatusError`` for a request that asks to upgrade the connection or override its
    method, and for a forwarded header given twice (two different values could be read differently by
    the proxy and the apiserver).
    """
    out: CIMultiDict[str] = CIMultiDict()
    # Headers that ``Connection:`` names are hop-by-hop for this one link (RFC 9110 §7.6.1): never copied.
    hop_by_hop = {
        token.strip().lower() for value in incoming.getall("Connection", ()) for token in value.split(",")
    }
    for name, value in incoming.items():
        key = name.lower()
        if key in hop_by_hop:
            continue
        if key in REFUSED_REQUEST_HEADERS:
            raise StatusError(400, f"the {name} header is not supported by this proxy")
        if key in FORWARDED_REQUEST_HEADERS:
            if name in out:
                raise StatusError(400, f"the {name} header must not be given more than once")
            if not _printable_ascii(value):
                # Non-ASCII bytes would be re-encoded on the way out: refuse rather than alter them.
                raise StatusError(400, f"the {name} header value must be printable ASCII")
            out[name] = value
    if "upgrade" in hop_by_hop:
        raise StatusError(400, "connection upgrades are not supported by this proxy")
    return out


_PRINTABLE_ASCII: Final = re.compile(r"[\t\x20-\x7e]*")


def _printable_ascii(value: str) -> bool:
    return _PRINTABLE_ASCII.fullmatch(value) is not None


def client_response_headers(upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Copy the allowlisted response headers, keeping repeated ones (``Warning`` may repeat)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream:
        if name.lower() in FORWARDED_RESPONSE_HEADERS:
            out.add(name, value)
    return out
