"""The listener's TLS settings, seen from a real client over loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiproxy.certs import ServingFiles, write_serving_bundle
from apiproxy.tlsconfig import server_ssl_context


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> ServingFiles:
    return write_serving_bundle(tmp_path_factory.mktemp("tls"), "proxy", names=["localhost", "127.0.0.1"])


@pytest.fixture
async def listener(serving: ServingFiles) -> AsyncIterator[int]:
    """A TLS echo of one line, with the proxy's listener context."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    context = server_ssl_context(serving.cert_file, serving.key_file)
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def round_trip(port: int, context: ssl.SSLContext) -> ssl.SSLObject:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        return ssl_object
    finally:
        writer.close()


async def test_no_session_tickets_are_issued(listener: int, serving: ServingFiles) -> None:
    """Clients of the proxy do not resume sessions, so each ticket would be CPU and a write for nothing
    on every handshake (thousands when watches reconnect)."""
    ssl_object = await round_trip(listener, client_context(serving.ca_file))
    assert ssl_object.version() == "TLSv1.3"
    session = ssl_object.session
    assert session is not None
    assert not session.has_ticket


async def test_http11_is_negotiated_over_alpn(listener: int, serving: ServingFiles) -> None:
    context = client_context(serving.ca_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    ssl_object = await round_trip(listener, context)
    assert ssl_object.selected_alpn_protocol() == "http/1.1"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_below_1_2_is_refused(listener: int, serving: ServingFiles) -> None:
    context = client_context(serving.ca_file)
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await round_trip(listener, context)
