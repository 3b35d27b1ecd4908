from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.e2e.scripted_upstream import ScriptedUpstream


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(tmp_path)
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[tuple[ScriptedUpstream, Sandbox]]:
    """A proxy in front of a scripted upstream: each test says exactly what the apiserver answers."""
    box = Sandbox(tmp_path)
    upstream = ScriptedUpstream()
    box.upstream = await upstream.start(box.upstream_server_ssl())
    await box.start()
    try:
        yield upstream, box
    finally:
        await box.stop()
        await upstream.stop()
