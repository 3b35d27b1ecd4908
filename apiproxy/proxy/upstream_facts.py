"""The two facts a concealed answer needs from the apiserver, read with the proxy's own identity.

* The **current resourceVersion** (the etcd revision): an empty list must carry one a client can watch
  from, and bookmarks must move with the apiserver's clock, or the client's next real request would be
  answered 410 Gone or wait for a revision that never comes. It is read from a one-item namespace list
  (``GET /api/v1/namespaces?limit=1``: its list ``metadata.resourceVersion`` is the current revision, and
  ``list namespaces`` is a grant the proxy has anyway, see ``Policy.rbac_rules``), at most once per ``ttl``
  so a burst of concealed requests costs one read. A failed read is remembered as long, and answered 503:
  a made-up version would be worse than none.
* The **kind** of a concealed resource: built in for the core resources a policy would conceal, else
  read from the group version's discovery document and cached.

Nothing about the concealed resource itself is ever read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import ClientError

from apiproxy.proxy import http1
from apiproxy.proxy.conceal import BUILTIN_KINDS, ConcealedKind, kinds_from_discovery
from apiproxy.proxy.upstream import Upstream, UpstreamError
from apiproxy.status import StatusError

__all__ = ["RESOURCE_VERSION_PATH", "UpstreamFacts"]

RESOURCE_VERSION_PATH = "/api/v1/namespaces?limit=1"
#: Discovery documents kept (group versions named by requests; bounded since the version is the client's).
_MAX_DISCOVERY = 64
_MAX_BODY = 4 * 1024 * 1024


class UpstreamFacts:
    """Cached reads of the current resourceVersion and of resource kinds (see the module doc)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        ttl: float = 1.0,
        discovery_ttl: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.ttl = ttl
        self.discovery_ttl = discovery_ttl
        self.timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._version: str | UpstreamError = UpstreamError(503, "protocol", "not read yet")
        self._version_expires = float("-inf")
        #: Reads made, for tests and the curious: each is one upstream request.
        self.version_reads = 0
        self._discovery: OrderedDict[tuple[str, str], tuple[float, dict[str, str] | UpstreamError]] = (
            OrderedDict()
        )
        self._discovery_lock = asyncio.Lock()

    # -- the current resourceVersion -----------------------------------------------------------------

    async def resource_version(self) -> str:
        """The apiserver's current resourceVersion, at most ``ttl`` old; 503 :class:`UpstreamError` when
        it cannot be read."""
        async with self._lock:
            if self._clock() >= self._version_expires:
                try:
                    self._version = await self._read_version()
                except UpstreamError as exc:
                    self._version = exc
                self._version_expires = self._clock() + self.ttl
            value = self._version
        if isinstance(value, UpstreamError):
            raise value
        return value

    async def _read_version(self) -> str:
        self.version_reads += 1
        status, body = await self._get(RESOURCE_VERSION_PATH, "the current resourceVersion")
        what = "cannot answer a concealed request: the apiserver's current resourceVersion"
        if status != 200:
            raise UpstreamError(
                503, "protocol", f"{what} is unknown ({RESOURCE_VERSION_PATH} answered {status})"
            )
        try:
            doc = json.loads(body)
            version = doc["metadata"]["resourceVersion"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(503, "protocol", f"{what} is missing from {RESOURCE_VERSION_PATH}") from exc
        if not isinstance(version, str) or not version.isdigit() or not version.isascii():
            raise UpstreamError(503, "protocol", f"{what} from {RESOURCE_VERSION_PATH} is not a number")
        return version

    # -- kinds ---------------------------------------------------------------------------------------

    async def kind(self, group: str, version: str, resource: str) -> ConcealedKind:
        """The kind of ``resource``; 404 when its group version does not serve it, 503 when unknown."""
        builtin = BUILTIN_KINDS.get((group, resource))
        if builtin is not None and version == "v1":
            return ConcealedKind(group, version, resource, builtin)
        if not group and version != "v1":
            # The core group has only ever served v1: no need to ask (nor to send a client's spelling).
            raise StatusError(404, "the server could not find the requested resource", reason="NotFound")
        kinds = await self._discover(group, version)
        kind = kinds.get(resource)
        if kind is None:
            raise StatusError(404, "the server could not find the requested resource", reason="NotFound")
        return ConcealedKind(group, version, resource, kind)

    async def _discover(self, group: str, version: str) -> dict[str, str]:
        key = (group, version)
        async with self._discovery_lock:
            cached = self._discovery.get(key)
            if cached is None or self._clock() >= cached[0]:
                try:
                    value: dict[str, str] | UpstreamError = await self._read_discovery(group, version)
                    expires = self._clock() + self.discovery_ttl
                except UpstreamError as exc:
                    value, expires = exc, self._clock() + self.ttl
                self._discovery[key] = cached = (expires, value)
                while len(self._discovery) > _MAX_DISCOVERY:
                    self._discovery.popitem(last=False)
        result = cached[1]
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def _read_discovery(self, group: str, version: str) -> dict[str, str]:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        status, body = await self._get(path, "discovery")
        if status == 404:
            return {}  # the group version is not served: every resource of it is unknown
        kinds = kinds_from_discovery(body) if status == 200 else None
        if kinds is None:
            raise UpstreamError(
                503, "protocol", f"cannot tell the kind of a concealed resource: {path} answered {status}"
            )
        return kinds

    # -- one read ------------------------------------------------------------------------------------

    async def _get(self, path: str, what: str) -> tuple[int, bytes]:
        """One small GET with the proxy's token; every failure is a 503 :class:`UpstreamError`."""
        headers = {"Authorization": self.upstream.token.authorization(), "Accept": "application/json"}
        response: http1.Response | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.upstream.open("GET", path, headers)
                body = bytearray()
                while chunk := await response.content.read(65536):
                    body += chunk
                    if len(body) > _MAX_BODY:
                        raise UpstreamError(
                            503, "protocol", f"the apiserver's answer for {what} is too large"
                        )
                response.release()  # read to its end: the connection goes back to the pool
        except UpstreamError as exc:
            raise UpstreamError(
                503, exc.kind, f"cannot read {what} for a concealed answer: {exc.message}"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamError(
                503, "timeout", f"the apiserver did not answer {path} within {self.timeout:g}s"
            ) from exc
        except ClientError as exc:
            raise UpstreamError(
                503, "stream", f"the apiserver broke off its answer for {what}: {exc}"
            ) from exc
        finally:
            if response is not None:
                response.close()  # a no-op once released
        return response.status, bytes(body)
