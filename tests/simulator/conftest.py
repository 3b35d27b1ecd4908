"""Fixtures: a seeded simulator on a loopback port and a session that carries its token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from apiproxy.simulator import Simulator, seed_mesh

TOKEN = "sa-token"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(tokens={TOKEN}, bookmark_interval=60.0, history_limit=1000)
    seed_mesh(s.store, pods=40, services=10, namespaces=3, nodes=3)
    await s.start(host="127.0.0.1", port=0)
    yield s
    await s.stop()


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


class EventReader:
    """Reads a JSON watch stream line by line, each read bounded by a deadline."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        line = await asyncio.wait_for(self.resp.content.readline(), timeout)
        if not line:
            return None
        event: dict[str, Any] = json.loads(line)
        return event

    async def take(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            ev = await self.next(timeout)
            assert ev is not None, f"stream ended after {len(out)} events"
            out.append(ev)
        return out

    async def until(self, type_: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Events up to and including the first of ``type_``."""
        out = []
        while True:
            ev = await self.next(timeout)
            assert ev is not None, f"stream ended before {type_}"
            out.append(ev)
            if ev["type"] == type_:
                return out
