"""An upstream whose every byte the test controls, and which records exactly what reached it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

Route = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class Arrived:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class ScriptedUpstream:
    routes: dict[str, Route] = field(default_factory=dict)
    arrived: list[Arrived] = field(default_factory=list)
    url: str = ""
    #: Set when a handler's client (the proxy) went away or the handler finished.
    handler_done: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.ServerRunner | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.arrived.append(Arrived(request.method, request.raw_path, CIMultiDict(request.headers), body))
        route = self.routes.get(request.raw_path.partition("?")[0])
        try:
            if route is None:
                return web.json_response({"kind": "Status", "code": 404}, status=404)
            return await route(request)
        finally:
            self.handler_done.set()

    async def start(self, ssl_context: ssl.SSLContext, port: int = 0) -> str:
        self._runner = web.ServerRunner(web.Server(self._handle, handler_cancellation=True, access_log=None))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
