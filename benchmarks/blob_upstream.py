"""A minimal TLS upstream that streams a fixed-size LIST body as fast as the loop allows.

Used where the simulated apiserver would be the bottleneck: the figure of interest is what the proxy
adds, not how fast a simulator can serialise objects.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

from aiohttp import web

CHUNK = 256 * 1024


def make_app(size: int) -> web.Server:
    piece = (b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"}},' * (CHUNK // 56 + 1))[:CHUNK]

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path.startswith("/version"):
            return web.json_response({"gitVersion": "v1.30.0"})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        while sent < size:
            data = piece[: min(CHUNK, size - sent)]
            await resp.write(data)
            sent += len(data)
        await resp.write_eof()
        return resp

    return web.Server(handle, access_log=None)


async def main(port: int, cert: str, key: str, size: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    runner = web.ServerRunner(make_app(size))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--size", type=int, default=50 * 1024 * 1024)
    a = parser.parse_args()
    asyncio.run(main(a.port, a.cert, a.key, a.size))
