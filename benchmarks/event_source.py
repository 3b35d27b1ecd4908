"""A purpose-built watch upstream: holds any number of idle watches and fires stamped events on demand.

    python -m benchmarks.event_source --port P --cert C --key K --token T

Every ``GET ...?watch=true...`` with the right bearer token becomes an endless chunked
``application/json`` watch stream. ``POST /bench/fire?rate=R&seconds=S`` then sends ``R`` MODIFIED events
a second for ``S`` seconds, round-robin over the open watches; each event carries the wall-clock time it
was written (``time.time_ns()``) in the annotation ``bench.apiproxy.io/sent``, so a client computes the
delivery latency as its receive time minus that. ``GET /bench/stats`` counts the open watches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from typing import Any

from aiohttp import web

STAMP = b'"bench.apiproxy.io/sent":"'
TICK = 0.005


class EventSource:
    def __init__(self, token: str) -> None:
        self.auth = f"Bearer {token}"
        self.watches: list[web.StreamResponse] = []
        self.rv = 1_000_000
        obj: dict[str, Any] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "NAME",
                "namespace": "bench",
                "resourceVersion": "RV",
                "labels": {"app": "reviews", "version": "v1", "security.istio.io/tlsMode": "istio"},
                "annotations": {"bench.apiproxy.io/sent": "SENT"},
            },
            "spec": {"nodeName": "worker-01", "serviceAccountName": "bookinfo-reviews"},
            "status": {"phase": "Running", "podIP": "10.0.3.17", "hostIP": "192.168.0.11"},
        }
        text = json.dumps({"type": "MODIFIED", "object": obj}, separators=(",", ":"))
        self.prefix, rest = text.split('"NAME"')
        self.middle, self.suffix = rest.split('"RV"')
        self.suffix = self.suffix.replace('"SENT"', '"{sent}"') + "\n"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        if path == "/version":
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.6"})
        if request.headers.get("Authorization") != self.auth:
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        if path == "/bench/stats":
            return web.json_response({"watches": len(self.watches)})
        if path == "/bench/fire" and request.method == "POST":
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            sent = await self.fire(float(params.get("rate", "1000")), float(params.get("seconds", "1")))
            return web.json_response({"sent": sent, "watches": len(self.watches)})
        if "watch=true" not in query and "watch=1" not in query:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.watches.append(resp)
        try:
            await asyncio.Event().wait()  # cancelled when the client goes away
        finally:
            self.watches.remove(resp)
        return resp

    def event(self, i: int) -> bytes:
        self.rv += 1
        return (
            f'{self.prefix}"w-{i}"{self.middle}"{self.rv}"'
            + self.suffix.replace("{sent}", str(time.time_ns()))
        ).encode()

    async def fire(self, rate: float, seconds: float) -> int:
        """Send ``rate`` events a second for ``seconds``, round-robin over the open watches."""
        sent, turn = 0, 0
        start = time.monotonic()
        total = int(rate * seconds)
        while sent < total and self.watches:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due and self.watches:
                turn = (turn + 1) % len(self.watches)
                resp = self.watches[turn]
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await resp.write(self.event(turn))
                sent += 1
            await asyncio.sleep(TICK)
        return sent


async def main(port: int, cert: str, key: str, token: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    source = EventSource(token)
    server = web.Server(source.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", required=True)
    a = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(a.port, a.cert, a.key, a.token))
    except ImportError:
        asyncio.run(main(a.port, a.cert, a.key, a.token))


if __name__ == "__main__":
    run()
