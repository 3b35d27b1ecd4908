"""Bounded fetches of a peer's documents: HTTPS (TLS verified, no redirects, 1 MiB cap, timeout) or file.

Every failure is a :class:`FetchError` whose ``reason`` is a condition reason and whose message never
contains a token or a byte of the response body (a hostile peer could otherwise write into our status).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiohttp

from apiproxy.multicluster.conditions import Reason

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TIMEOUT = 10.0


class FetchError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class TLSOptions:
    ca_pem: str | None = None
    insecure_skip_verify: bool = False

    def context(self) -> ssl.SSLContext:
        """System roots, or only ``ca_pem``; verification off only when explicitly asked.

        Cached per option set: aiohttp pools connections per SSL context, so a new context per request
        would open a new TLS connection every time."""
        return _context(self)


@functools.lru_cache(maxsize=256)
def _context(options: TLSOptions) -> ssl.SSLContext:
    if options.insecure_skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        if options.ca_pem:
            return ssl.create_default_context(cadata=options.ca_pem)
        return ssl.create_default_context()
    except ssl.SSLError as exc:
        raise FetchError(Reason.FETCH_FAILED, f"spec.metadata.ca is not a usable CA: {exc.reason}") from None


class Fetcher(Protocol):
    async def get(self, url: str, *, tls: TLSOptions, token: str | None = None) -> bytes: ...


class HTTPFetcher:
    """The real fetcher; one aiohttp session, no cookies, no redirects, no proxies from the environment."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False
            )
        return self._session

    async def get(self, url: str, *, tls: TLSOptions, token: str | None = None) -> bytes:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return await asyncio.to_thread(read_file, Path(unquote(parts.path)), self.max_bytes)
        if parts.scheme != "https":
            raise FetchError(Reason.FETCH_FAILED, f"refusing scheme {parts.scheme!r} (https or file only)")
        headers: Mapping[str, str] = {"Accept": "application/json"}
        if token is not None:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        where = f"{parts.hostname}{_port(parts.port)}{parts.path}"  # never the query or any userinfo
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().get(
                    url, headers=headers, ssl=tls.context(), allow_redirects=False
                ) as resp:
                    if 300 <= resp.status < 400:
                        raise FetchError(Reason.REDIRECT, f"GET {where}: HTTP {resp.status} redirect refused")
                    if resp.status in (401, 403) and token is not None:
                        raise FetchError(
                            Reason.TOKEN_REJECTED, f"GET {where}: HTTP {resp.status}, our token refused"
                        )
                    if resp.status != 200:
                        raise FetchError(Reason.NON_OK, f"GET {where}: HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > self.max_bytes:
                        raise FetchError(
                            Reason.TOO_LARGE, f"GET {where}: body larger than {self.max_bytes} bytes"
                        )
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise FetchError(
                                Reason.TOO_LARGE, f"GET {where}: body larger than {self.max_bytes} bytes"
                            )
                    return bytes(body)
        except TimeoutError:
            raise FetchError(
                Reason.TIMEOUT, f"GET {where}: no complete answer in {self.timeout:g}s"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise FetchError(Reason.FETCH_FAILED, f"GET {where}: TLS: {_short(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            refused = exc.os_error.strerror or type(exc.os_error).__name__
            raise FetchError(Reason.FETCH_FAILED, f"GET {where}: cannot connect: {refused}") from None
        except aiohttp.ClientError as exc:
            raise FetchError(
                Reason.FETCH_FAILED, f"GET {where}: {type(exc).__name__}: {_short(exc)}"
            ) from None


def _port(port: int | None) -> str:
    return f":{port}" if port else ""


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def read_file(path: Path, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """A ``file://`` document with the same size cap as HTTP."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FetchError(Reason.FETCH_FAILED, f"read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FetchError(Reason.TOO_LARGE, f"{path} is larger than {max_bytes} bytes")
    return data
